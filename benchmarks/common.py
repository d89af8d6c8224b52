"""Arguments every benchmark shares (model, prompt count, output length, batch size), benchmark data,
and the random-init SmolLM2-135M-shaped model used where the real weights are not installed (GPU)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def base_parser(description: str) -> argparse.ArgumentParser:
    """--model (name or path), --n (prompts), --max-new-tokens (per prompt), --batch-size (prompts)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    return parser


def data_root() -> Path:
    """$LOOPDISTILL_DATA, else ../shared/data beside the checkout (as tests/conftest.py)."""
    return Path(os.environ.get("LOOPDISTILL_DATA", REPO.parent / "shared" / "data"))


def gsm8k_train_examples(n: int):
    """The first n GSM8K train rows as a TRAIN_EXAMPLES table (prompt = question, completion = answer)."""
    from loopdistill.schemas import TRAIN_EXAMPLES, make_table

    rows = []
    with open(data_root() / "gsm8k" / "train.jsonl") as f:
        for i, line in zip(range(n), f):
            row = json.loads(line)
            rows.append({"id": f"gsm8k-train-{i}", "prompt": row["question"], "completion": row["answer"]})
    if len(rows) < n:
        raise ValueError(f"asked for {n} GSM8K train rows, {data_root()} has {len(rows)}")
    return make_table(TRAIN_EXAMPLES, rows)


def save_random_smollm2_shape(tokenizer_dir: str, out_dir: str) -> str:
    """A random-init Llama of SmolLM2-135M's shape (30 layers, 576 wide, 9 heads / 3 KV heads, tied
    embeddings, 49152 vocab) with SmolLM2's tokenizer from `tokenizer_dir`, saved to `out_dir`.
    Same FLOPs and memory as the real model: for timing where its weights cannot be installed."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
