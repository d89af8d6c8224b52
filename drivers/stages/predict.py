"""Step 1: the current student answers every seed of the pool D0 greedily, with logprobs."""
from __future__ import annotations

import ray

from drivers.context import RunContext, StageInputs, StageResult
from drivers.progress import predict_chunked
from loopdistill.config import RunConfig

TABLES = ("predictions",)


def run(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """{"predictions": PREDICTIONS of the current adapter on the n SEEDS rows, pool order}."""
    student, adapter = ctx.actors.student, ctx.state.adapter_dir
    if ctx.bar is None:
        predictions = ray.get(student.predict.remote(ctx.refs.seeds, adapter))
    else:  # in chunks, so the progress line moves as the student answers
        predictions = predict_chunked(student.predict, ctx.splits.seeds, chunk_rows(ctx.config), ctx.bar, adapter)
    return StageResult(tables={"predictions": predictions})


def progress_rows(ctx: RunContext) -> int:
    """Items on this stage's progress line: the seeds answered."""
    return ctx.splits.seeds.num_rows


def chunk_rows(config: RunConfig) -> int:
    """Rows per student call when a progress line follows the answers. The transformers engine
    batches by student.batch_size anyway, so chunks of that size cost nothing; the vLLM engine
    schedules one call as one continuously batched engine run, and chunks of 256 made the 1,100-seed
    predict stage of the 4x H100 study wait on each chunk's longest answer: it gets one call."""
    return config.student.batch_size if config.student.engine == "transformers" else 2**31 - 1
