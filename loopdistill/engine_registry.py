"""The engines by name: where each one's class lives and which roles it may serve.

Domain data only (no engine is imported here): the config validates `teacher.engine` and
`student.engine` against it, and `actors.engines.build_engine` imports the class it names. A new
engine is one file under actors/engines/ plus one line below.
"""
from __future__ import annotations

from typing import NamedTuple


class EngineEntry(NamedTuple):
    """path: "module:Class" of the engine; roles: the config sections that may name it."""

    path: str
    roles: frozenset[str]


TEACHER, STUDENT = "teacher", "student"

ENGINE_REGISTRY: dict[str, EngineEntry] = {
    "transformers": EngineEntry("actors.engines.transformers_engine:TransformersEngine", frozenset({TEACHER, STUDENT})),
    "programmatic": EngineEntry("actors.engines.programmatic:ProgrammaticEngine", frozenset({TEACHER})),
    "vllm": EngineEntry("actors.engines.vllm_engine:VLLMEngine", frozenset({TEACHER, STUDENT})),
    "openai": EngineEntry("actors.engines.openai_engine:OpenAIEngine", frozenset({TEACHER})),
}


def engine_names(role: str) -> list[str]:
    """Names of the engines that may serve `role` ("teacher" or "student"), in registry order."""
    return [name for name, entry in ENGINE_REGISTRY.items() if role in entry.roles]


def check_engine(name: str, role: str) -> str:
    """`name` if it is a registered engine for `role`.

    Raises:
        ValueError: unknown name, or an engine that does not serve `role`; the message lists the
            valid names (the config's error adds the field, `<role>.engine`).
    """
    if role not in (TEACHER, STUDENT):
        raise ValueError(f"unknown engine role {role!r}; valid: {[TEACHER, STUDENT]}")
    entry = ENGINE_REGISTRY.get(name)
    if entry is None:
        raise ValueError(f"unknown {role} engine {name!r}; valid: {engine_names(role)}")
    if role not in entry.roles:
        raise ValueError(f"engine {name!r} cannot serve the {role}; valid: {engine_names(role)}")
    return name
