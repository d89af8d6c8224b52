"""Compare selection strategies: one run per strategy of the same config, all in one MLflow
experiment (side by side in the MLflow UI), and a table of their final figures.

`loopdistill compare --strategies loss_high,random CONFIG [section.key=value ...]`

Runs one after another, one seed each: a quick look. For replicates with standard errors, runs spread
over the cluster's GPUs and the paper's win matrix and data ratio, use `loopdistill study`
(drivers/study.py).
"""
from __future__ import annotations

import logging

from mlflow.tracking import MlflowClient

from drivers.tracking import tracking_uri
from loopdistill.config import load_config

log = logging.getLogger("loopdistill")

# Columns of the comparison table: (header, MLflow metric key, format).
COLUMNS = (
    ("test acc (baseline)", "baseline/test_accuracy", "{:.3f}"),
    ("test acc", "eval/test_accuracy", "{:.3f}"),
    ("val ECE", "eval/val_ece", "{:.3f}"),
    ("teacher tokens", "budget/teacher_tokens", "{:.0f}"),
    ("synthetic kept", "synth/total", "{:.0f}"),
    ("selected score", "select/selected_mean_score", "{:.3f}"),
    ("pool score", "select/pool_mean_score", "{:.3f}"),
    ("selected loss", "select/selected_mean_loss", "{:.3f}"),
    ("pool loss", "select/pool_mean_loss", "{:.3f}"),
    ("parent/child rho", "fidelity/spearman_parent_child_loss", "{:.2f}"),
    ("token TV", "fidelity/token_tv_distance", "{:.3f}"),
)


def compare(config_path: str, strategies: list[str], overrides: list[str]) -> list[dict]:
    """Run the config once per strategy (run name = strategy). Returns one row per run: strategy,
    run id, stop reason and the last value of each metric in COLUMNS (None when not logged). A run
    that raises is logged, given stop reason "failed: <error>", and the next strategy runs.

    Raises:
        loopdistill.config.ConfigError: a bad config or an unknown strategy (before any run starts).
    """
    from drivers.loop import run

    configs = [load_config(config_path, [*overrides, f"loop.strategy={s}", f"tracking.run_name={s}"]) for s in strategies]
    rows = []
    for strategy, config in zip(strategies, configs):
        try:
            summary = run(config)
        except Exception as err:  # one failed strategy must not cost the others' runs
            log.exception("strategy %s failed; its run is marked FAILED in MLflow, going on", strategy)
            rows.append({"strategy": strategy, "run_id": None, "stop_reason": f"failed: {type(err).__name__}: {err}"[:200]})
            continue
        client = MlflowClient(tracking_uri(config.tracking))
        metrics = dict(client.get_run(summary.mlflow_run_id).data.metrics)
        # The baseline is step 0 of the eval/ curves; the table shows it as its own column.
        at_zero = [m.value for m in client.get_metric_history(summary.mlflow_run_id, "eval/test_accuracy") if m.step == 0]
        metrics["baseline/test_accuracy"] = at_zero[0] if at_zero else None
        row = {"strategy": strategy, "run_id": summary.mlflow_run_id, "stop_reason": summary.stop_reason}
        row.update({key: metrics.get(key) for _, key, _ in COLUMNS})
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The rows of `compare` as a Markdown table ("-" where a metric was not logged)."""
    header = ["strategy", *[h for h, _, _ in COLUMNS], "stop"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["strategy"]]
        cells += ["-" if row.get(key) is None else fmt.format(row[key]) for _, key, fmt in COLUMNS]
        lines.append("| " + " | ".join([*cells, row["stop_reason"]]) + " |")
    return "\n".join(lines)
