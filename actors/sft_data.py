"""Supervised finetuning data for the trainer: tokenisation, loss masks, rank shards and batches.

Pure functions (no Ray, no DeepSpeed) so the masking and sharding rules are testable on their own.
A training sequence is exactly what the student sees at inference followed by the answer:
    format_prompt(tokenizer, prompt, use_chat_template) + completion + end_of_answer(tokenizer)
and the loss covers only the completion and its end-of-answer token.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from loopdistill.models import end_of_answer, format_prompt

IGNORE_INDEX = -100  # label of tokens without loss (prompt, padding); torch cross_entropy's default


@dataclass
class Example:
    """One tokenised example: `input_ids` (L,) and `labels` (L,), IGNORE_INDEX on prompt tokens."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool  # the completion was cut by max_seq_len

    @property
    def num_target_tokens(self) -> int:
        """Loss labels that a position predicts: all but a labelled first token (nothing predicts
        it). The count `completion_nll` takes for this example in any batch."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def tokenize_examples(
    table: pa.Table, tokenizer, use_chat_template: bool, max_prompt_tokens: int, max_seq_len: int
) -> list[Example]:
    """Tokenise TRAIN_EXAMPLES rows (n) into n Examples, in row order.

    Prompt and completion are tokenised separately (no special tokens added, as at inference), so the
    label boundary is exact. The prompt keeps its last `max_prompt_tokens` tokens (the generation
    engine left-truncates the same way); then the sequence is cut to `max_seq_len` from the right, so a
    long completion loses its end.
    """
    prompts = [format_prompt(tokenizer, p, use_chat_template) for p in table.column("prompt").to_pylist()]
    eos = end_of_answer(tokenizer)
    completions = [c + eos for c in table.column("completion").to_pylist()]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"] if completions else []
    out = []
    for p_ids, c_ids in zip(prompt_ids, completion_ids):
        p_ids = p_ids[-max_prompt_tokens:]
        ids = (p_ids + c_ids)[:max_seq_len]
        labels = ([IGNORE_INDEX] * len(p_ids) + c_ids)[:max_seq_len]
        out.append(Example(ids, labels, truncated=len(p_ids) + len(c_ids) > max_seq_len))
    return out


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch (b examples, longest L) to tensors input_ids, attention_mask, labels: (b, L).
    Padding has attention 0 and label IGNORE_INDEX."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids, dtype=torch.long)
        labels[i, :n] = torch.tensor(e.labels, dtype=torch.long)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_steps_per_epoch(num_examples: int, world_size: int, micro_batch_size: int, grad_accum_steps: int) -> int:
    """Micro-batches each rank runs per epoch: enough to see every example once, rounded up to a
    whole number of optimizer steps (so no gradient is carried across an epoch boundary)."""
    per_rank = math.ceil(num_examples / world_size)
    micro = math.ceil(per_rank / micro_batch_size)
    return math.ceil(micro / grad_accum_steps) * grad_accum_steps


def rank_batches(
    num_examples: int, epoch: int, seed: int, rank: int, world_size: int, micro_batch_size: int, grad_accum_steps: int
) -> list[list[int]]:
    """Example indices of this rank's micro-batches for one epoch.

    Every rank draws the same permutation (seeded by `seed + epoch`), pads it by repeating it up to
    world_size * micro_batch_size * micro_steps_per_epoch, and takes every world_size-th index from
    `rank` on. So all ranks run the same number of steps (collectives stay in lockstep) and each
    example is seen at least once per epoch. Returns micro_steps_per_epoch lists of micro_batch_size.
    """
    steps = micro_steps_per_epoch(num_examples, world_size, micro_batch_size, grad_accum_steps)
    order = np.random.default_rng(seed + epoch).permutation(num_examples)
    order = np.resize(order, steps * micro_batch_size * world_size)[rank::world_size]
    return [order[i * micro_batch_size : (i + 1) * micro_batch_size].tolist() for i in range(steps)]


def step_target_tokens(
    examples: list[Example], epoch: int, seed: int, world_size: int, micro_batch_size: int, grad_accum_steps: int
) -> list[int]:
    """Loss tokens in each optimizer step's global batch (all ranks, all accumulation micro-batches)
    of one epoch: the denominator of that step's token-mean NLL. Every rank computes the same list
    from the data alone (rank_batches is deterministic), so no collective is needed before the first
    backward of a step. Returns micro_steps_per_epoch / grad_accum_steps counts."""
    shards = [
        rank_batches(len(examples), epoch, seed, rank, world_size, micro_batch_size, grad_accum_steps)
        for rank in range(world_size)
    ]
    counts = []
    for step in range(len(shards[0]) // grad_accum_steps):
        micro = range(step * grad_accum_steps, (step + 1) * grad_accum_steps)
        counts.append(sum(examples[i].num_target_tokens for shard in shards for m in micro for i in shard[m]))
    return counts


def eval_batches(num_examples: int, rank: int, world_size: int, batch_size: int) -> list[list[int | None]]:
    """Validation indices of this rank: a strided shard, padded with None (a batch slot without loss)
    so every rank runs the same number of forward passes (ZeRO-3 gathers weights collectively)."""
    shard: list[int | None] = list(range(rank, num_examples, world_size))
    steps = math.ceil(math.ceil(num_examples / world_size) / batch_size)
    shard += [None] * (steps * batch_size - len(shard))
    return [shard[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def without_loss(example: Example) -> Example:
    """A copy of `example` that contributes no loss (all labels IGNORE_INDEX): a padding slot."""
    return Example(example.input_ids, [IGNORE_INDEX] * len(example.labels), example.truncated)


def completion_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL (nats) over labelled positions and their count.

    logits (b, L, V), labels (b, L) with IGNORE_INDEX where no loss is taken. Returns (sum, count):
    0-dim float32 and int64 tensors. The logits are upcast to fp32 for the softmax.
    """
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, (shift_labels != IGNORE_INDEX).sum()
