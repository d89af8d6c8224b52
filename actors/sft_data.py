"""Tokenisation and batching of supervised (prompt, completion) examples for LoRA finetuning."""
from __future__ import annotations

import random

import pyarrow as pa
import torch

from loopdistill.models import end_of_answer, format_prompt

IGNORE_INDEX = -100  # label value the cross-entropy loss skips (prompt and padding tokens)


def tokenize_examples(table: pa.Table, tokenizer, use_chat_template: bool, max_seq_len: int) -> list[dict]:
    """TRAIN_EXAMPLES rows -> [{"input_ids": list[int], "labels": list[int]}], loss on the completion only.

    The prompt goes through the same chat template the student answers under; the completion ends with
    EOS so the student learns to stop. Sequences are truncated to `max_seq_len` tokens from the right.
    """
    out = []
    for row in table.to_pylist():
        prompt = format_prompt(tokenizer, row["prompt"], use_chat_template)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(row["completion"] + end_of_answer(tokenizer), add_special_tokens=False)["input_ids"]
        ids = (p_ids + c_ids)[:max_seq_len]
        labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_seq_len]
        out.append({"input_ids": ids, "labels": labels})
    return out


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids, labels (IGNORE_INDEX on padding), attention_mask; each (b, t)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def rank_batches(examples: list[dict], rank: int, world_size: int, micro_batch: int, epoch: int, seed: int) -> list[list[dict]]:
    """This rank's micro-batches for one epoch.

    All ranks shuffle with the same (seed, epoch), so the global order is one permutation; rank r takes
    the r-th slice of each global batch of world_size * micro_batch examples. The last global batch is
    filled by wrapping around so every rank runs the same number of steps (a collective would hang).
    """
    order = list(range(len(examples)))
    random.Random(f"{seed}-{epoch}").shuffle(order)
    global_batch = world_size * micro_batch
    steps = -(-len(order) // global_batch)
    order = (order * (1 + global_batch))[: steps * global_batch]
    return [
        [examples[j] for j in order[s * global_batch + rank * micro_batch : s * global_batch + (rank + 1) * micro_batch]]
        for s in range(steps)
    ]
