"""Generation back ends. `build_engine` picks one from a config's `engine` name."""
from __future__ import annotations

import hashlib

from actors.engines.base import Engine, Generation, SamplingParams

ENGINES = ("transformers", "programmatic", "vllm", "openai")


def build_engine(
    engine: str, model, task_name: str, batch_size: int, device: str = "cpu",
    vllm=None, openai=None, enable_lora: bool = False, limits=None,
) -> Engine:
    """Instantiate the named engine inside an actor.

    vllm / openai: the section's VLLMConfig / OpenAIConfig (defaults when None); enable_lora: the vLLM
    engine reserves LoRA slots (the student's set_adapter); limits: the pool's shared RPM/TPM limiter
    for engine 'openai' (None: the engine's own, from the config).

    Raises:
        ValueError: unknown engine name (the valid ones are listed).
        ImportError: engine 'vllm' without vLLM installed (the message gives the install line).
    """
    if engine == "transformers":
        from actors.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, batch_size=batch_size, device=device)
    if engine == "programmatic":
        from actors.engines.programmatic import ProgrammaticEngine

        return ProgrammaticEngine(task_name, model)
    if engine == "vllm":
        from actors.engines.vllm_engine import VLLMEngine
        from loopdistill.config import VLLMConfig

        return VLLMEngine(model, vllm or VLLMConfig(), device=device, enable_lora=enable_lora)
    if engine == "openai":
        from actors.engines.openai_engine import OpenAIEngine
        from loopdistill.config import OpenAIConfig

        return OpenAIEngine(model, openai or OpenAIConfig(), limits=limits)
    raise ValueError(f"unknown engine {engine!r}; valid: {list(ENGINES)}")


def prompt_seeds(prompts: list[str], seed: int) -> list[int]:
    """A sampling seed per prompt (31-bit ints), from (seed, prompt, how often the prompt occurred
    before in the list): a prompt's sample does not depend on which other prompts share its batch,
    and repeats of one prompt (several responses per question) still differ."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        k = seen.get(p, 0)
        seen[p] = k + 1
        digest = hashlib.blake2b(f"{seed}\n{k}\n{p}".encode(), digest_size=4).digest()
        out.append(int.from_bytes(digest, "big") & 0x7FFFFFFF)
    return out


def teacher_seed(*parts) -> int:
    """The one derivation of teacher sampling seeds: a 31-bit int hashed from `parts`, in practice
    (run seed, iteration, purpose) for a call and then (call seed, request_id) per request, so a
    request's seed is a function of (run seed, iteration, purpose, request_id) only. It depends on no batch, shard or replica count, so
    a resumed run that splits the work differently asks for (and finds cached) the very same requests."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "build_engine", "prompt_seeds", "teacher_seed"]
