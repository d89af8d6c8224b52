"""Generation back ends. `build_engine` picks one from a config's `engine` name."""
from __future__ import annotations

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


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "build_engine"]
