"""Data parallelism does not change the optimisation: W=2 ranks x micro-batch b give the same per-step
loss curve as W=1 x micro-batch 2b, and as W=1 x b with 2 accumulation steps (same global batch of the
same examples, fp32, LoRA dropout 0, same seed), for ZeRO stages 0, 2 and 3. Real Ray + DeepSpeed (gloo)."""
from __future__ import annotations

import pyarrow as pa
import pytest

from actors.sft_data import rank_batches, step_target_tokens, tokenize_examples
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.models import load_tokenizer
from loopdistill.schemas import TRAIN_EXAMPLES, make_table

MODEL = ModelConfig(path="tiny-random-llama", max_prompt_tokens=64, use_chat_template=False)
GLOBAL_BATCH = 8
# Per-step token-mean losses agree to this relative tolerance. What differs between the runs is only
# the shape of the fp32 matmuls (padding width, batch split) and the order of the gradient sum: measured
# gap ~1e-7. Averaging per-rank (or per-micro-batch) token means instead of the global batch's
# tokens gave a gap of ~1.2e-3 on this data (2026-11-25), which this tolerance catches.
RTOL = 1e-4


def uneven(n: int) -> pa.Table:
    """n rows whose completions differ in length (1 to 7 sentences), so the two halves of a global
    batch hold different token counts: a per-rank mean of means would then differ from the global mean."""
    rows = []
    for i in range(n):
        a, b = (3 * i) % 10, (7 * i) % 10
        answer = " ".join([f"{a} + {b} = {a + b}."] * (1 + 3 * (i % 3))) + f" The answer is {a + b}."
        rows.append({"id": f"u{i}", "prompt": f"What is {a} + {b}?", "completion": answer})
    return make_table(TRAIN_EXAMPLES, rows)


def config(**overrides) -> TrainerConfig:
    values = dict(
        num_ranks=1, num_cpus_per_rank=0.5, zero_stage=0, lora_rank=8, lora_alpha=8, learning_rate=3e-2,
        epochs=3, micro_batch_size=GLOBAL_BATCH, max_seq_len=128, seed=0,
    )
    values.update(overrides)
    return TrainerConfig(**values)


def step_losses(cfg: TrainerConfig, tmp_path, name: str) -> list[float]:
    """Per-step training losses (nats/token) of one TrainerGroup run on the shared data."""
    from actors.trainer import TrainerGroup
    from drivers.actor_group import trainer_spec

    group = TrainerGroup(cfg, MODEL, trainer_spec(cfg), ready_timeout_s=120)
    try:
        out = group.train(uneven(16), uneven(4), str(tmp_path / name))
    finally:
        group.shutdown()
    assert not out["trainer/nan_loss"] and len(out["trainer/step_losses"]) == out["trainer/steps"]
    return out["trainer/step_losses"]


def max_relative_gap(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory) -> list[float]:
    """W=1, micro-batch 2b = the global batch."""
    return step_losses(config(), tmp_path_factory.mktemp("ref"), "w1")


def test_the_data_would_catch_a_mean_of_rank_means():
    """Guard on the fixture: in most steps the two ranks' halves hold different token counts."""
    examples = tokenize_examples(uneven(16), load_tokenizer(MODEL.path), False, 64, 128)
    half, unequal = GLOBAL_BATCH // 2, 0
    for epoch in range(3):
        shards = [rank_batches(16, epoch, 0, r, 2, half, 1) for r in range(2)]
        per_rank = [[sum(examples[i].num_target_tokens for i in m) for m in shard] for shard in shards]
        unequal += sum(t0 != t1 for t0, t1 in zip(*per_rank))
        # The global denominators do not depend on how the batch is split.
        assert step_target_tokens(examples, epoch, 0, 2, half, 1) == step_target_tokens(examples, epoch, 0, 1, GLOBAL_BATCH, 1)
        assert step_target_tokens(examples, epoch, 0, 1, half, 2) == step_target_tokens(examples, epoch, 0, 1, GLOBAL_BATCH, 1)
    assert unequal >= 4  # of 6 steps


def test_reference_curve_moves(reference):
    """The comparison is meaningful only if the LoRA changes the loss over the 6 steps."""
    assert len(reference) == 3 * 2
    print("W=1 reference step losses:", [round(x, 5) for x in reference])
    assert reference[-1] < reference[0] - 0.05, reference


def test_grad_accumulation_matches_one_big_micro_batch(reference, tmp_path):
    accum = step_losses(config(micro_batch_size=GLOBAL_BATCH // 2, grad_accum_steps=2), tmp_path, "accum")
    gap = max_relative_gap(accum, reference)
    print(f"W=1 b={GLOBAL_BATCH // 2} x2 accumulation vs W=1 b={GLOBAL_BATCH}: max relative gap {gap:.2e}")
    assert gap < RTOL, (accum, reference)


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_two_ranks_match_one_rank_with_the_same_global_batch(reference, tmp_path, zero_stage):
    two = step_losses(config(num_ranks=2, micro_batch_size=GLOBAL_BATCH // 2, zero_stage=zero_stage), tmp_path, "w2")
    gap = max_relative_gap(two, reference)
    print(f"ZeRO-{zero_stage} W=2 b={GLOBAL_BATCH // 2} vs W=1 b={GLOBAL_BATCH}: max relative gap {gap:.2e}")
    assert gap < RTOL, (two, reference)
