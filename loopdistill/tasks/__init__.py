"""Task registry: name -> Task instance (loading, prompts, answer extraction, verifier)."""
from loopdistill.tasks.base import DataError, Splits, Task
from loopdistill.tasks.game24 import Game24Task
from loopdistill.tasks.gsm8k import GSM8KTask
from loopdistill.tasks.hendrycks_math import MathTask
from loopdistill.tasks.prontoqa import ProntoQATask

TASKS: dict[str, Task] = {task.name: task for task in (GSM8KTask(), Game24Task(), MathTask(), ProntoQATask())}


def get_task(name: str) -> Task:
    """Raises ValueError listing the valid task names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid: {sorted(TASKS)}")
    return TASKS[name]


__all__ = ["TASKS", "DataError", "Splits", "Task", "get_task"]
