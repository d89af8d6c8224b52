"""TrainerGroup on real Ray + DeepSpeed (CPU, gloo) with a tiny random Llama."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from actors.sft_data import IGNORE_INDEX, rank_batches, tokenize_examples
from actors.trainer import TrainerGroup
from loopdistill.config import ModelConfig, TrainerConfig
from loopdistill.models import load_tokenizer
from loopdistill.schemas import TRAIN_EXAMPLES, SchemaError, make_table

MODEL = ModelConfig(path="tiny-random-llama")


def _examples(n: int, offset: int = 0):
    rows = [
        {"id": str(i), "prompt": f"What is {i} plus {i}?", "completion": f"{i} + {i} = {2 * i}. The answer is {2 * i}."}
        for i in range(offset, offset + n)
    ]
    return make_table(TRAIN_EXAMPLES, rows)


def _adapter(path):
    return load_file(f"{path}/adapter_model.safetensors")


@pytest.fixture(scope="module")
def group(ray_local):
    cfg = TrainerConfig(epochs=4, learning_rate=2e-2, micro_batch_size=4, lora_rank=8, lora_alpha=8, warmup_ratio=0.0)
    g = TrainerGroup(cfg, MODEL)
    yield g
    g.shutdown()


def test_training_lowers_validation_loss_and_writes_a_loadable_adapter(group, tmp_path):
    data = _examples(24)
    result = group.train(data, data.slice(0, 8), str(tmp_path / "a"))
    assert result["trainer/steps"] == 4 * 6
    assert result["trainer/tokens"] > 0 and result["trainer/accelerator_seconds"] > 0
    assert result["trainer/best_epoch"] == 3  # the loss keeps falling on this easy data
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loopdistill.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL.path))
    PeftModel.from_pretrained(base, result["adapter_dir"])  # loads without error
    weights = _adapter(result["adapter_dir"])
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())


def test_every_call_starts_from_a_fresh_lora(group, tmp_path):
    a, b = _examples(16), _examples(16, offset=50)
    first = group.train(a, a.slice(0, 4), str(tmp_path / "1"))
    group.train(b, b.slice(0, 4), str(tmp_path / "2"))
    again = group.train(a, a.slice(0, 4), str(tmp_path / "3"))
    assert first["trainer/val_loss_best"] == pytest.approx(again["trainer/val_loss_best"], rel=1e-6)
    w1, w3 = _adapter(tmp_path / "1"), _adapter(tmp_path / "3")
    assert all(torch.allclose(w1[k], w3[k]) for k in w1)


def test_missing_column_is_named(group, tmp_path):
    bad = _examples(4).drop_columns(["completion"])
    with pytest.raises(Exception, match="completion"):
        group.train(bad, _examples(2), str(tmp_path / "x"))


def test_loss_only_on_completion_tokens():
    tok = load_tokenizer(MODEL.path)
    ex = tokenize_examples(_examples(1), tok, use_chat_template=True, max_seq_len=512)[0]
    n_completion = sum(1 for label in ex["labels"] if label != IGNORE_INDEX)
    completion = tok("0 + 0 = 0. The answer is 0." + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert n_completion == len(completion)
    assert ex["labels"][-n_completion:] == completion


def test_rank_batches_cover_the_data_and_keep_ranks_in_step():
    data = [{"i": i} for i in range(10)]
    r0 = rank_batches(data, 0, 2, 3, epoch=0, seed=0)
    r1 = rank_batches(data, 1, 2, 3, epoch=0, seed=0)
    assert len(r0) == len(r1) == 2
    seen = {e["i"] for batch in r0 + r1 for e in batch}
    assert seen == set(range(10))
