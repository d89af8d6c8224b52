"""Arrow schemas of every boundary between the driver and the actors.

One constant per boundary. A producer builds its table with `make_table(SCHEMA, rows)`; a consumer
calls `require_columns(table, SCHEMA, where)` on entry so a wrong table fails with the missing column
named, not with a KeyError deep inside an actor.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import pyarrow as pa

# A (question, answer) example: the seed pool D0, validation and test splits. `reference` is the
# verifier's ground truth (a number for GSM8K, the puzzle for Game of 24); `answer` is a full
# worked solution used as the training target.
SEEDS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),
    ]
)

# The student's greedy answer to each seed (step 1 of Algorithm 1). `loss` is the mean negative
# log-probability (nats/token) of the generated tokens, read from the generation logprobs;
# `confidence` is the probability of the final-answer tokens (0 when no answer could be extracted).
PREDICTIONS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prediction", pa.string(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("loss", pa.float64(), nullable=False),
        pa.field("confidence", pa.float64(), nullable=False),
        pa.field("correct", pa.bool_(), nullable=False),
    ]
)

# A seed's selection score under one strategy (step 2); higher is selected first.
SCORES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
    ]
)

# The student's mean NLL (nats/token) of each seed's reference answer, teacher-forced (gt_loss_high).
REFERENCE_LOSSES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("gt_loss", pa.float64(), nullable=False),
    ]
)

# r(x, y_hat) of the student's answer: a reward model's logit, or the verifier's 0/1 (reward_*).
REWARDS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("reward", pa.float64(), nullable=False),
    ]
)

# BADGE gradient embedding of the loss on the student's own answer, randomly projected (d floats).
EMBEDDINGS = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
    ]
)

# One request to the teacher pool and its answer.
TEACHER_REQUESTS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
    ]
)
TEACHER_RESPONSES = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        # True: answered from the paid-once request cache, so not charged to the budget again.
        pa.field("cached", pa.bool_(), nullable=False),
    ]
)

# What the teacher client sends to the pool per request: the prompt with the sampling seed it derived
# (0 for greedy) and the prompt's token count it reserved against the budget, so no actor recounts.
TEACHER_SENDS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
    ]
)

# One pairwise judgement: which of two answers to `question` is better (answers in the order shown).
JUDGE_REQUESTS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer_a", pa.string(), nullable=False),
        pa.field("answer_b", pa.string(), nullable=False),
    ]
)
# A judgement as sent to the pool: the request plus `prompt` (the judge prompt text: the request-cache
# key and what the budget counts), its seed and its prompt token count.
JUDGE_SENDS = pa.schema(
    list(JUDGE_REQUESTS)
    + [
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
    ]
)

# A synthetic (question, answer) pair with its provenance (step 4). Trained on like a seed.
SYNTHETIC = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("parent_id", pa.string(), nullable=False),
        pa.field("iteration", pa.int64(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("question", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("reference", pa.string(), nullable=False),
        pa.field("teacher_input_tokens", pa.int64(), nullable=False),
        pa.field("teacher_output_tokens", pa.int64(), nullable=False),
    ]
)

# Supervised examples for the trainer group: `prompt` is the task's answer prompt for a question
# (before the chat template), `completion` the worked answer the student should learn to write.
TRAIN_EXAMPLES = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("completion", pa.string(), nullable=False),
    ]
)


class SchemaError(ValueError):
    """A table lacks a column, or a column has the wrong type, at a named boundary."""


def require_columns(table: pa.Table, schema: pa.Schema, where: str) -> None:
    """Check that `table` has every field of `schema` with a compatible type.

    Raises:
        SchemaError: naming `where`, the missing or mistyped column and the expected type.
    """
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(f"{where}: missing column {field.name!r} (expected {field.type})")
        actual = table.schema.field(field.name).type
        if actual != field.type and not (pa.types.is_null(actual) and table.num_rows == 0):
            raise SchemaError(f"{where}: column {field.name!r} has type {actual}, expected {field.type}")


def make_table(schema: pa.Schema, rows: Iterable[Mapping]) -> pa.Table:
    """Build a table of `schema` from row dicts (extra keys are ignored, missing keys raise)."""
    rows = list(rows)
    columns = {}
    for field in schema:
        try:
            columns[field.name] = [row[field.name] for row in rows]
        except KeyError as err:
            raise SchemaError(f"row lacks field {err.args[0]!r} of schema {schema.names}") from None
    return pa.table(columns, schema=schema)


def project(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and cast `table` to exactly the columns of `schema` (e.g. SYNTHETIC -> SEEDS)."""
    require_columns(table, schema, "project")
    return table.select(schema.names).cast(schema)
