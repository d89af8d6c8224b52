"""Cost of the student's loss score with and without the free logprob path.

Free path (ours): the mean NLL of the greedy answer is read from the logits `generate` already
computed. Baseline: generate, then a second forward pass over prompt + answer to score the answer.
Same model, prompts and process; reports seconds of each and their ratio, and checks both losses agree.

    PYTHONPATH=. python benchmarks/scoring_logprobs.py --model smollm2 --n 32 --max-new-tokens 64
"""
from __future__ import annotations

import json
import platform
import time

import torch

from actors.engines.base import SamplingParams
from benchmarks.common import base_parser
from actors.engines.transformers_engine import TransformersEngine
from loopdistill.config import ModelConfig
from loopdistill.models import format_prompt
from loopdistill.tasks import get_task


def second_pass_loss(engine: TransformersEngine, prompts: list[str], answers_ids: list[list[int]]) -> list[float]:
    """Baseline: one extra forward pass per batch over prompt + generated tokens."""
    tok, losses = engine.tokenizer, []
    for start in range(0, len(prompts), engine.batch_size):
        texts = [format_prompt(tok, p, engine.config.use_chat_template) for p in prompts[start : start + engine.batch_size]]
        for text, ids in zip(texts, answers_ids[start : start + engine.batch_size]):
            p_ids = tok(text, add_special_tokens=False)["input_ids"]
            x = torch.tensor([p_ids + ids], device=engine.device)
            with torch.no_grad():
                logits = engine.base(x).logits[0, len(p_ids) - 1 : -1].float()
            logp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids, device=engine.device)[:, None])
            losses.append(float(-logp.mean()))
    return losses


def main() -> None:
    args = base_parser("student loss scoring: free logprobs vs a second forward pass").parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    engine = TransformersEngine(ModelConfig(path=args.model), batch_size=args.batch_size, device=device)
    task = get_task("game24")
    splits = task.load_splits("generate", args.n, 1, 1, seed=0)
    prompts = [task.answer_prompt(q) for q in splits.seeds.column("question").to_pylist()]
    # Warm-up at the timed batch shape: on an H100 the first full batch took ~14 s against ~4 s after
    # (lazy CUDA set-up); a 2-prompt warm-up left that cost in whichever path ran first.
    engine.generate(prompts[: args.batch_size], SamplingParams(args.max_new_tokens, logprobs=False))

    t0 = time.perf_counter()
    free = engine.generate(prompts, SamplingParams(args.max_new_tokens, logprobs=True))
    t_free = time.perf_counter() - t0
    free_loss = [-sum(g.token_logprobs) / len(g.token_logprobs) for g in free]

    t0 = time.perf_counter()
    plain = engine.generate(prompts, SamplingParams(args.max_new_tokens, logprobs=False))
    ids = [engine.tokenizer(g.text, add_special_tokens=False)["input_ids"] for g in plain]
    two_pass_loss = second_pass_loss(engine, prompts, ids)
    t_two = time.perf_counter() - t0

    gap = max(abs(a - b) for a, b in zip(free_loss, two_pass_loss))
    print(json.dumps({
        "benchmark": "student loss scoring", "model": args.model, "device": device, "machine": platform.processor() or platform.machine(),
        "prompts": args.n, "max_new_tokens": args.max_new_tokens,
        "free_logprob_s": round(t_free, 2), "generate_plus_forward_s": round(t_two, 2),
        "speedup": round(t_two / t_free, 3), "max_abs_loss_gap_nats": round(gap, 4),
    }))


if __name__ == "__main__":
    main()
