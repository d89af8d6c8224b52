"""Generation back ends. `build_engine` picks one from a config's `engine` name."""
from __future__ import annotations

from actors.engines.base import Engine, Generation, SamplingParams

ENGINES = ("transformers", "programmatic")


def build_engine(engine: str, model, task_name: str, batch_size: int, device: str = "cpu") -> Engine:
    """Instantiate the named engine inside an actor.

    Raises:
        ValueError: unknown engine name (the valid ones are listed).
    """
    if engine == "transformers":
        from actors.engines.transformers_engine import TransformersEngine

        return TransformersEngine(model, batch_size=batch_size, device=device)
    if engine == "programmatic":
        from actors.engines.programmatic import ProgrammaticEngine

        return ProgrammaticEngine(task_name, model)
    raise ValueError(f"unknown engine {engine!r}; valid: {list(ENGINES)}")


__all__ = ["ENGINES", "Engine", "Generation", "SamplingParams", "build_engine"]
