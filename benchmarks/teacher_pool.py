"""Teacher pool throughput vs the raw engine on the same prompts, in one script.

Ours: TeacherPool (Ray actor replicas, request cache, Arrow tables). Baseline: the same
TransformersEngine called in-process. Reports output tokens/s of each and pool/engine (target >= 0.95).

    python benchmarks/teacher_pool.py --model smollm2 --n 32 --max-new-tokens 64
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import ray
import torch

from actors.engines.base import SamplingParams
from benchmarks.common import base_parser
from actors.engines.transformers_engine import TransformersEngine
from actors.teacher import TeacherPool
from loopdistill.config import ModelConfig, TeacherConfig
from loopdistill.schemas import TEACHER_REQUESTS, make_table
from tasks import get_task


def main() -> None:
    args = base_parser("teacher pool vs the raw engine").parse_args()
    gpu = torch.cuda.is_available()
    task = get_task("gsm8k")
    prompts = [task.answer_prompt(f"Tom has {i} apples and buys {i + 3} more. How many apples does he have?") for i in range(args.n)]
    # Greedy on both sides: identical work, so the ratio measures only the pool's overhead.
    params = SamplingParams(args.max_new_tokens, temperature=0.0)

    engine = TransformersEngine(ModelConfig(path=args.model), batch_size=args.batch_size, device="cuda" if gpu else "cpu")
    # Warm-up at the timed batch shape: on an H100 the first full batch took ~14 s against ~4 s after
    # (lazy CUDA set-up), which a 2-prompt warm-up does not absorb.
    engine.generate(prompts[: args.batch_size], params)
    t0 = time.perf_counter()
    raw = engine.generate(prompts, params)
    t_raw = time.perf_counter() - t0
    raw_tokens = sum(g.output_tokens for g in raw)
    del engine
    if gpu:
        torch.cuda.empty_cache()

    # Keep what PYTHONPATH already holds (on the GPU machine: the carried ray/deepspeed in /tmp/site).
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    ray.init(include_dashboard=False, configure_logging=False)
    cfg = TeacherConfig(engine="transformers", model={"path": args.model}, temperature=0.0, max_new_tokens=args.max_new_tokens,
                        batch_size=args.batch_size, num_gpus=1 if gpu else 0)
    pool = TeacherPool(cfg, "gsm8k", cache_path=os.path.join(tempfile.mkdtemp(), "cache.sqlite"))
    requests = make_table(TEACHER_REQUESTS, [{"request_id": str(i), "prompt": p} for i, p in enumerate(prompts)])
    pool.generate(requests.slice(0, args.batch_size), seed=1)  # warm-up as above (different key: not cached below)
    t0 = time.perf_counter()
    out = pool.generate(requests, seed=0)
    t_pool = time.perf_counter() - t0
    pool_tokens = sum(out.column("output_tokens").to_pylist())
    ray.shutdown()
    print(json.dumps({
        "benchmark": "teacher pool vs raw engine", "model": args.model, "device": "cuda" if gpu else "cpu",
        "machine": platform.processor() or platform.machine(), "prompts": args.n, "max_new_tokens": args.max_new_tokens,
        "engine_tokens_per_s": round(raw_tokens / t_raw, 1), "pool_tokens_per_s": round(pool_tokens / t_pool, 1),
        "pool_over_engine": round((pool_tokens / t_pool) / (raw_tokens / t_raw), 3), "same_tokens": raw_tokens == pool_tokens,
    }))


if __name__ == "__main__":
    main()
