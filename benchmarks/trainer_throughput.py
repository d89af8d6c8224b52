"""Trainer tokens/s: our TrainerGroup (W=1, Ray actor + DeepSpeed ZeRO) vs a plain PEFT loop, in one script.

Both finetune a fresh LoRA (all linear layers, rank = alpha) on the same GSM8K train rows (prompt =
question, completion = answer), same batches in the same order, same sequence length, same number of
optimizer steps; torch AdamW, grad-norm clip 2.0, warm-up + linear decay, token-mean completion NLL.
bf16 on a GPU, fp32 on the CPU. Each side first runs a 2-step warm-up call, then the timed call.

Timed: one whole train call from the caller's side, the model already loaded: tokenisation, fresh
LoRA, optimizer steps, saving the adapter (ours adds Ray transfer and DeepSpeed's engine set-up).
Tokens = non-padding tokens (prompt + completion) of the steps. Reports tokens/s of each and ours/plain.

    PYTHONPATH=. python benchmarks/trainer_throughput.py --model smollm2 --batch-size 4 --steps 8 --max-seq-len 256
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import tempfile
import time

import pyarrow as pa
import ray
import torch

from actors.sft_data import collate, completion_nll, rank_batches, tokenize_examples
from benchmarks.common import base_parser, gsm8k_train_examples
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.models import load_causal_lm, load_tokenizer


def trainer_config(args, gpu: bool, steps: int) -> TrainerConfig:
    """W=1, one epoch of `steps` steps of `args.batch_size` rows, no validation."""
    return TrainerConfig(
        num_ranks=1, num_cpus_per_rank=1, num_gpus_per_rank=1 if gpu else 0, zero_stage=args.zero_stage,
        lora_rank=args.lora_rank, lora_alpha=args.lora_rank, learning_rate=5e-4, epochs=1,
        micro_batch_size=args.batch_size, max_seq_len=args.max_seq_len, seed=0,
    )


def plain_peft_train(
    base, tokenizer, table: pa.Table, cfg: TrainerConfig, model: ModelConfig, device: str, out_dir: str
) -> tuple[int, float]:
    """Baseline: the textbook PEFT loop on one device, same recipe as TrainerRankActor. Returns the
    non-padding tokens it trained on and the last step's loss (nats/token)."""
    from peft import LoraConfig, get_peft_model
    from transformers import get_linear_schedule_with_warmup

    examples = tokenize_examples(table, tokenizer, model.use_chat_template, model.max_prompt_tokens, cfg.max_seq_len)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    peft_model = get_peft_model(copy.deepcopy(base), lora).train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    batches = rank_batches(len(examples), 0, cfg.seed, 0, 1, cfg.micro_batch_size, 1)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * len(batches)), len(batches))
    tokens, loss = 0, math.nan
    for indices in batches:
        batch = {k: v.to(device) for k, v in collate([examples[i] for i in indices], tokenizer.pad_token_id).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        total, count = completion_nll(logits, batch["labels"])
        loss = total / count.clamp(min=1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(batch["attention_mask"].sum())
    if device == "cuda":
        torch.cuda.synchronize()
    peft_model.save_pretrained(out_dir)
    return tokens, float(loss.detach()) if torch.is_tensor(loss) else loss


def time_plain(args, table: pa.Table, warmup: pa.Table, model: ModelConfig, gpu: bool, out: str) -> tuple[int, float, float]:
    """(tokens, seconds, last loss) of the timed plain-loop call; the base model stays loaded between calls."""
    device = "cuda" if gpu else "cpu"
    tokenizer = load_tokenizer(model.path)
    # The trainer's dtypes: base weights bf16 on a GPU (LoRA weights fp32, PEFT's default), fp32 on the CPU.
    base = load_causal_lm(model.path, dtype=torch.bfloat16 if gpu else torch.float32, device=device)
    plain_peft_train(base, tokenizer, warmup, trainer_config(args, gpu, 2), model, device, os.path.join(out, "plain-warm"))
    t0 = time.perf_counter()
    tokens, loss = plain_peft_train(base, tokenizer, table, trainer_config(args, gpu, args.steps), model, device, os.path.join(out, "plain"))
    seconds = time.perf_counter() - t0
    del base
    if gpu:
        torch.cuda.empty_cache()
    return tokens, seconds, loss


def time_ours(args, table: pa.Table, warmup: pa.Table, model: ModelConfig, gpu: bool, out: str) -> tuple[int, float, dict]:
    """(tokens, seconds, result) of the timed TrainerGroup.train call, seen from the caller."""
    from actors.trainer import TrainerGroup
    from drivers.actor_group import trainer_spec

    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    ray.init(include_dashboard=False, configure_logging=False)
    cfg = trainer_config(args, gpu, args.steps)
    group = TrainerGroup(cfg, model, trainer_spec(cfg), ready_timeout_s=300)
    empty = table.slice(0, 0)  # no validation: the last (only) epoch is kept, as in the plain loop
    try:
        group.train(warmup, empty, os.path.join(out, "ours-warm"))
        t0 = time.perf_counter()
        result = group.train(table, empty, os.path.join(out, "ours"))
        seconds = time.perf_counter() - t0
    finally:
        group.shutdown()
        ray.shutdown()
    return result["trainer/tokens"], seconds, result


def main() -> None:
    parser = base_parser("trainer tokens/s: TrainerGroup (W=1) vs a plain PEFT loop")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of the timed call")
    parser.add_argument("--max-seq-len", type=int, default=256, help="prompt + answer tokens")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    args = parser.parse_args()  # --batch-size: rows per step; --n and --max-new-tokens are not used
    gpu = torch.cuda.is_available()
    model = ModelConfig(path=args.model, use_chat_template=False)
    rows = gsm8k_train_examples(args.steps * args.batch_size + 2 * args.batch_size)
    table, warmup = rows.slice(0, args.steps * args.batch_size), rows.slice(args.steps * args.batch_size)
    out = tempfile.mkdtemp(prefix="trainer-bench-")

    plain_tokens, plain_s, plain_loss = time_plain(args, table, warmup, model, gpu, out)
    ours_tokens, ours_s, result = time_ours(args, table, warmup, model, gpu, out)
    plain_tps, ours_tps = plain_tokens / plain_s, ours_tokens / ours_s
    print(json.dumps({
        "benchmark": "trainer tokens/s", "model": args.model, "device": torch.cuda.get_device_name() if gpu else "cpu",
        "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "steps": args.steps,
        "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "lora_rank": args.lora_rank,
        "zero_stage": args.zero_stage, "same_tokens": plain_tokens == ours_tokens, "tokens": ours_tokens,
        "plain_s": round(plain_s, 2), "ours_s": round(ours_s, 2),
        "plain_tokens_per_s": round(plain_tps, 1), "ours_tokens_per_s": round(ours_tps, 1),
        "ours_inside_actor_tokens_per_s": round(result["trainer/tokens_per_s"], 1),
        "ours_over_plain": round(ours_tps / plain_tps, 3),
        "plain_last_step_loss": round(plain_loss, 4),
        "ours_last_step_loss": round(result["trainer/step_losses"][-1], 4) if result["trainer/step_losses"] else math.nan,
    }))


if __name__ == "__main__":
    main()
