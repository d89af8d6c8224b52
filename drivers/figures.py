"""The figures of one finished iteration (drivers/plots.py), drawn from what it left: the metrics so
far, iter_NN/val_predictions.parquet (reliability diagram) and iter_NN/forecast.json (scaling fit)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from drivers import plots
from drivers.budget import LIMITS
from drivers.calibration import reliability_curve
from drivers.checkpoint import RunState
from drivers.scaling import LawFit
from loopdistill.config import RunConfig



def iteration_figures(config: RunConfig, state: RunState, t: int, out_dir: Path, metrics: dict[str, float]) -> dict:
    """{artifact path under plots/iter_NN/: matplotlib Figure} of iteration t (metrics: its own,
    not yet in state.history): accuracy curves, reliability diagram, forecast (when the forecast
    fitted) and budget spend against the limits."""
    where, gate, out = f"plots/iter_{t:02d}", config.gate, {}
    baseline = [state.baseline | {"budget/teacher_samples": 0.0, "budget/teacher_tokens": 0.0}] if state.baseline else []
    out[f"{where}/accuracy.png"] = plots.learning_curves(baseline + state.history + [metrics])
    val_file = out_dir / "val_predictions.parquet"
    if val_file.is_file():
        val = pq.read_table(val_file)
        conf, hit = val.column("confidence").to_numpy(), val.column("correct").to_numpy(zero_copy_only=False)
        curve = reliability_curve(conf, hit, gate.ece_bins, gate.ece_min_per_bin)
        out[f"{where}/reliability.png"] = plots.reliability_diagram(curve, metrics.get("eval/val_ece", 0.0), f"iteration {t} validation")
    forecast_file = out_dir / "forecast.json"
    if forecast_file.is_file():
        record = json.loads(forecast_file.read_text())
        label = {"samples": "kept synthetic samples", "tokens": "teacher tokens"}[record["axis"]]
        out[f"{where}/forecast.png"] = plots.forecast_figure(
            np.array(record["D"]), np.array(record["val_error"]), LawFit(**record["fit"]), record["target_D"],
            tuple(record["interval"]), label)
    limits = {name: getattr(config.budget, name) for name in LIMITS}
    spent = {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("budget/")}
    out[f"{where}/budget.png"] = plots.budget_figure(spent, limits)
    return out
