"""Step 6: accuracy, calibration error (ECE) and mean confidence of the current student on the
validation and test splits (the test split is read for reporting only)."""
from __future__ import annotations

import pyarrow as pa
import ray

from drivers.calibration import expected_calibration_error
from drivers.context import RunContext, StageInputs, StageResult
from drivers.progress import predict_chunked
from drivers.stages.predict import chunk_rows

TABLES = ("val_predictions",)


def run(ctx: RunContext, inputs: StageInputs | None = None, prefix: str = "eval") -> StageResult:
    """{"val_predictions": PREDICTIONS on the validation split} (the reliability diagram's input) and
    <prefix>/{val,test}_{accuracy,ece,mean_confidence}. With ctx.bar the student answers in chunks
    that advance it."""
    val, test = predictions(ctx)
    return StageResult(tables={"val_predictions": val}, metrics=evaluation_metrics(ctx, prefix, val, test))


def progress_rows(ctx: RunContext) -> int:
    """Items on this stage's progress line: validation and test questions answered."""
    return ctx.splits.validation.num_rows + ctx.splits.test.num_rows


def predictions(ctx: RunContext) -> tuple[pa.Table, pa.Table]:
    """PREDICTIONS of the current student on (validation, test)."""
    student, adapter = ctx.actors.student, ctx.state.adapter_dir
    if ctx.bar is None:
        return tuple(ray.get([student.predict.remote(ctx.refs.validation, adapter), student.predict.remote(ctx.refs.test, adapter)]))
    size = chunk_rows(ctx.config)
    val = predict_chunked(student.predict, ctx.splits.validation, size, ctx.bar, adapter)
    test = predict_chunked(student.predict, ctx.splits.test, size, ctx.bar, adapter)
    return val, test


def evaluation_metrics(ctx: RunContext, prefix: str, val: pa.Table, test: pa.Table) -> dict[str, float]:
    """Accuracy, ECE (equal-count bins, gate.ece_bins / gate.ece_min_per_bin; confidence = the
    final-answer tokens' probability, drivers/calibration.py) and mean confidence per split."""
    gate, out = ctx.config.gate, {}
    for split, table in (("val", val), ("test", test)):
        correct = table.column("correct").to_numpy(zero_copy_only=False)
        confidence = table.column("confidence").to_numpy()
        out[f"{prefix}/{split}_accuracy"] = float(correct.mean())
        out[f"{prefix}/{split}_ece"] = expected_calibration_error(confidence, correct, gate.ece_bins, gate.ece_min_per_bin)
        out[f"{prefix}/{split}_mean_confidence"] = float(confidence.mean())
    return out
