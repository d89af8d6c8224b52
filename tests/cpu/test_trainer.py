"""TrainerGroup / TrainerRankActor on real Ray + real DeepSpeed (gloo, CPU) with the tiny random Llama."""
from __future__ import annotations

import math
import os
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from actors.sft_data import IGNORE_INDEX, collate, completion_nll, eval_batches, rank_batches, tokenize_examples
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.models import format_prompt, load_causal_lm, load_tokenizer
from loopdistill.schemas import TRAIN_EXAMPLES, SchemaError, make_table

REPO = Path(__file__).resolve().parents[2]
# Plain prompts (no chat template) keep sequences short: ~25 tokens, so CPU steps are fast.
MODEL = ModelConfig(path="tiny-random-llama", max_prompt_tokens=64, use_chat_template=False)


def arithmetic(n: int, offset: int = 0) -> pa.Table:
    rows = []
    for i in range(n):
        a, b = (3 * i + offset) % 10, (7 * i + 2 * offset) % 10
        rows.append({"id": f"q{offset}-{i}", "prompt": f"What is {a} + {b}?", "completion": f"{a} + {b} = {a + b}. The answer is {a + b}."})
    return make_table(TRAIN_EXAMPLES, rows)


def trainer_config(**overrides) -> TrainerConfig:
    values = dict(
        num_ranks=1, num_cpus_per_rank=0.5, zero_stage=2, lora_rank=8, lora_alpha=8, learning_rate=1e-2,
        epochs=4, micro_batch_size=8, max_seq_len=64, seed=0,
    )
    values.update(overrides)
    return TrainerConfig(**values)


@pytest.fixture(scope="module")
def ray_cpu(ray_local):
    """The session's local Ray (tests/conftest.py)."""
    return ray_local


@pytest.fixture(scope="module")
def group(ray_cpu):
    from actors.trainer import TrainerGroup
    from drivers.actor_group import trainer_spec

    cfg = trainer_config()
    g = TrainerGroup(cfg, MODEL, trainer_spec(cfg), ready_timeout_s=120)
    yield g
    g.shutdown()


def completion_loss(table: pa.Table, adapter_dir: str | None) -> float:
    """Mean completion NLL (nats/token) of the base model, or base + the saved adapter via PEFT."""
    tokenizer = load_tokenizer(MODEL.path)
    model = load_causal_lm(MODEL.path)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir).eval()
    examples = tokenize_examples(table, tokenizer, MODEL.use_chat_template, MODEL.max_prompt_tokens, 64)
    batch = collate(examples, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    total, count = completion_nll(logits, batch["labels"])
    return float(total / count)


def adapter_weights(adapter_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))


# --- data helpers (no Ray) ----------------------------------------------------------------------
def test_labels_cover_only_the_completion():
    tokenizer = load_tokenizer(MODEL.path)
    table = arithmetic(2)
    ex = tokenize_examples(table, tokenizer, True, 64, 64)[0]
    prompt_len = len(tokenizer(format_prompt(tokenizer, "What is 0 + 0?", True), add_special_tokens=False)["input_ids"])
    assert all(label == IGNORE_INDEX for label in ex.labels[:prompt_len])
    assert ex.labels[prompt_len:] == ex.input_ids[prompt_len:]
    assert ex.input_ids[-1] == tokenizer.eos_token_id  # the student learns to stop
    assert tokenizer.decode(ex.input_ids[prompt_len:], skip_special_tokens=True) == "0 + 0 = 0. The answer is 0."
    short = tokenize_examples(table, tokenizer, True, 64, prompt_len + 2)[0]
    assert short.truncated and len(short.input_ids) == prompt_len + 2
    batch = collate([ex, short], tokenizer.pad_token_id)
    assert batch["labels"][1, prompt_len + 2 :].eq(IGNORE_INDEX).all() and batch["attention_mask"][1].sum() == prompt_len + 2


def test_rank_shards_cover_every_example_in_equal_steps():
    shards = [rank_batches(10, epoch=0, seed=0, rank=r, world_size=3, micro_batch_size=2, grad_accum_steps=1) for r in range(3)]
    assert len({len(s) for s in shards}) == 1  # same number of steps on every rank
    seen = {i for s in shards for b in s for i in b}
    assert seen == set(range(10))
    assert rank_batches(10, 1, 0, 0, 3, 2, 1) != shards[0]  # reshuffled each epoch
    val = [eval_batches(5, r, 2, 2) for r in range(2)]
    assert len(val[0]) == len(val[1]) and sorted(i for s in val for b in s for i in b if i is not None) == list(range(5))


# --- Ray + DeepSpeed ----------------------------------------------------------------------------
def test_training_lowers_loss_and_writes_a_peft_adapter(group, tmp_path):
    train, val = arithmetic(24), arithmetic(8, offset=1)
    out = group.train(train, val, str(tmp_path / "adapter"))

    assert out["adapter_dir"] == str(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert out["trainer/steps"] == 4 * 3 and out["trainer/examples"] == 24 and not out["trainer/nan_loss"]
    assert out["trainer/tokens"] > 0 and out["trainer/tokens_per_s"] > 0
    assert out["trainer/accelerator_seconds"] == pytest.approx(out["trainer/seconds"])
    assert 0 <= out["trainer/best_epoch"] < 4 and math.isfinite(out["trainer/val_loss_best"])

    base_train, base_val = completion_loss(train, None), completion_loss(val, None)
    tuned_train, tuned_val = completion_loss(train, out["adapter_dir"]), completion_loss(val, out["adapter_dir"])
    # The random 64-wide model with frozen tied embeddings cannot get far below ln(vocab) ~ 10.8 nats;
    # a fresh LoRA still lowers it clearly within a few epochs.
    assert tuned_train < base_train - 0.3, (base_train, tuned_train)
    assert out["trainer/train_loss"] < base_train - 0.2
    # The saved adapter is the best-validation epoch's, as reported.
    assert tuned_val == pytest.approx(out["trainer/val_loss_best"], rel=1e-3)
    assert tuned_val < base_val


def test_each_call_trains_a_fresh_lora(group, tmp_path):
    data_a, data_b, val = arithmetic(8), arithmetic(8, offset=5), arithmetic(4, offset=1)
    first = group.train(data_a, val, str(tmp_path / "a1"))
    other = group.train(data_b, val, str(tmp_path / "b"))
    again = group.train(data_a, val, str(tmp_path / "a2"))

    w1, wb, w2 = (adapter_weights(r["adapter_dir"]) for r in (first, other, again))
    assert w1.keys() == w2.keys() and any("lora_A" in k for k in w1)
    # Same data and seed after training on other data in between: bit-identical, so nothing carried over.
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not all(torch.equal(w1[k], wb[k]) for k in w1)
    assert first["trainer/val_loss_best"] == again["trainer/val_loss_best"]


def test_missing_column_and_empty_table_are_named(group, ray_cpu, tmp_path):
    bad = arithmetic(4).drop_columns(["completion"])
    with pytest.raises(SchemaError, match="completion"):
        group.train(bad, arithmetic(4), str(tmp_path / "x"))
    # Through an ObjectRef the check happens inside the ranks; the error still names the column.
    with pytest.raises(SchemaError, match="completion"):
        group.train(ray_cpu.put(bad), ray_cpu.put(arithmetic(4)), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="empty"):
        group.train(arithmetic(0), arithmetic(4), str(tmp_path / "x"))
    assert group.ranks  # the group survives a rejected call


def test_two_ranks_train_with_gloo(ray_cpu, tmp_path):
    from actors.trainer import TrainerGroup
    from drivers.actor_group import trainer_spec

    cfg = trainer_config(num_ranks=2, epochs=2, micro_batch_size=4)
    g = TrainerGroup(cfg, MODEL, trainer_spec(cfg), ready_timeout_s=120)
    try:
        train = arithmetic(14)
        out = g.train(train, arithmetic(5, offset=1), str(tmp_path / "adapter"))
    finally:
        g.shutdown()
    # 14 examples over 2 ranks x 4 per micro-batch: 2 steps per epoch (the last padded by repetition).
    assert out["trainer/steps"] == 2 * 2 and not out["trainer/nan_loss"]
    tokenizer = load_tokenizer(MODEL.path)
    per_epoch = sum(len(e.input_ids) for e in tokenize_examples(train, tokenizer, False, 64, 64))
    assert out["trainer/tokens"] >= 2 * per_epoch  # summed over both ranks
    assert out["trainer/accelerator_seconds"] > out["trainer/seconds"]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_nan_loss_stops_the_step_and_keeps_the_last_good_adapter(ray_cpu, tmp_path):
    """An absurd learning rate blows the weights up after the first step: training stops on the
    non-finite loss instead of crashing, and an adapter (the last good one) is still written."""
    from actors.trainer import TrainerGroup
    from drivers.actor_group import trainer_spec

    cfg = trainer_config(learning_rate=1e30, epochs=3)
    group = TrainerGroup(cfg, MODEL, trainer_spec(cfg), ready_timeout_s=120)
    try:
        data = arithmetic(16)
        result = group.train(data, data.slice(0, 4), str(tmp_path / "adapter"))
    finally:
        group.shutdown()
    assert result["trainer/nan_loss"] is True
    assert result["trainer/steps"] < 3 * 2
    assert os.path.exists(os.path.join(result["adapter_dir"], "adapter_model.safetensors"))
