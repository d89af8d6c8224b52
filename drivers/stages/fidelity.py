"""Fidelity of this iteration's synthetic data (drivers/fidelity.py), its own stage so that the
student inference it needs is not timed as generation: token distance of the new rows to the seed
pool, and whether a hard seed gives a hard child under the same (not yet retrained) student.
"""
from __future__ import annotations

import ray

from drivers import fidelity
from drivers.context import RunContext, StageInputs, StageResult

TABLES = ()


def run(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """fidelity/* metrics of inputs.tables["synthetic"] (this iteration's SYNTHETIC rows) against
    inputs.tables["predictions"] (the pool's PREDICTIONS); nothing when loop.fidelity_metrics is off."""
    if not ctx.config.loop.fidelity_metrics:
        return StageResult()
    student, adapter = ctx.actors.student, ctx.state.adapter_dir
    predict = lambda examples: ray.get(student.predict.remote(examples, adapter))  # noqa: E731
    metrics = fidelity.synthesis_fidelity(ctx.tokenizer(), predict, inputs.tables["synthetic"], inputs.tables["predictions"], ctx.splits.seeds)
    return StageResult(metrics=metrics)
