"""The training pairs of a task: which prompt the student learns to answer and with what.

Domain data only (task + table -> TRAIN_EXAMPLES rows); tokenisation, loss masks and batching for the
trainer live in actors/sft_data.py.
"""
from __future__ import annotations

import pyarrow as pa

from loopdistill.schemas import SEEDS, TRAIN_EXAMPLES, make_table, project


def to_train_examples(task, table: pa.Table, completions: list[str] | None = None) -> pa.Table:
    """TRAIN_EXAMPLES from SEEDS-like rows (n): the task's answer prompt -> the completion, which is the
    row's worked answer unless `completions` (n strings, e.g. the student's own answers) is given.
    Training and the student's teacher-forced passes share it, so both see the same format.

    task: a `loopdistill.tasks.Task` (its `answer_prompt`); table: rows with at least the SEEDS columns.

    Raises:
        loopdistill.schemas.SchemaError: `table` lacks a SEEDS column or has it with another type.
    """
    rows = project(table, SEEDS).to_pylist()
    texts = completions if completions is not None else [r["answer"] for r in rows]
    return make_table(
        TRAIN_EXAMPLES,
        [{"id": r["id"], "prompt": task.answer_prompt(r["question"]), "completion": c} for r, c in zip(rows, texts)],
    )
