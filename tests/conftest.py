"""Shared fixtures: one local Ray for the whole session, and the benchmark data beside the repo."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests use local models only; never wait on the hub


def data_root() -> Path:
    """$LOOPDISTILL_DATA, else ../shared/data beside the checkout (never committed)."""
    return Path(os.environ.get("LOOPDISTILL_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.is_dir():
        pytest.skip(f"benchmark data not found at {root}")
    return root


@pytest.fixture(scope="session")
def ray_local():
    """Local Ray with 4 logical CPUs (actors reserve 1 each; the loop's stages run one at a time)."""
    import ray

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory) -> str:
    """A tiny random Llama sequence-classification reward model (one score logit) with the SmolLM2
    tokenizer, saved to a directory; built here because no reward model can be downloaded."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from loopdistill.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("tiny-random-llama"))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("reward_model")
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
