"""Generation back ends. `build_engine` builds the one a config's `engine` names, from the registry
(loopdistill/engine_registry.py)."""
from __future__ import annotations

import importlib

from actors.engines.base import (
    AdapterEngine,
    AttemptRefused,
    ForwardEngine,
    Generation,
    GenerationEngine,
    JudgeEngine,
    JudgeItem,
    SamplingParams,
    StreamingEngine,
)
from loopdistill.engine_registry import ENGINE_REGISTRY, STUDENT, TEACHER

# What an engine registered for a role must implement (the registry's roles, as protocols).
ROLE_PROTOCOLS: dict[str, tuple[type, ...]] = {
    TEACHER: (GenerationEngine, JudgeEngine),
    STUDENT: (GenerationEngine, AdapterEngine),
}


def engine_class(engine: str) -> type:
    """The class registered under `engine` (its module is imported now).

    Raises:
        ValueError: unknown engine name (the valid ones are listed).
        ImportError: the engine's module needs a package that is not installed (e.g. vLLM; the
            message gives the install line).
    """
    entry = ENGINE_REGISTRY.get(engine)
    if entry is None:
        raise ValueError(f"unknown engine {engine!r}; valid: {list(ENGINE_REGISTRY)}")
    module, _, name = entry.path.partition(":")
    return getattr(importlib.import_module(module), name)


def build_engine(
    engine: str, model, task_name: str, batch_size: int, device: str = "cpu",
    vllm=None, openai=None, enable_lora: bool = False, limits=None,
) -> GenerationEngine:
    """Instantiate the named engine inside an actor, through its `from_config` classmethod.

    model: the section's ModelConfig; batch_size: prompts per engine call (engines that batch
    themselves ignore it); vllm / openai: the section's VLLMConfig / OpenAIConfig (defaults when
    None); enable_lora: the vLLM engine reserves LoRA slots (the student's set_adapter); limits: the
    pool's shared RPM/TPM limiter for engine 'openai' (None: the engine's own, from the config).

    Raises:
        ValueError: unknown engine name (the valid ones are listed).
        ImportError: engine 'vllm' without vLLM installed (the message gives the install line).
    """
    return engine_class(engine).from_config(
        model, task_name=task_name, batch_size=batch_size, device=device, vllm=vllm, openai=openai,
        enable_lora=enable_lora, limits=limits,
    )


__all__ = [
    "AdapterEngine", "AttemptRefused", "ForwardEngine", "Generation", "GenerationEngine", "JudgeEngine", "JudgeItem",
    "ROLE_PROTOCOLS", "SamplingParams", "StreamingEngine", "build_engine", "engine_class",
]
