"""MLflow tracking: one run per experiment; only the driver writes to it.

Default store: a SQLite file under the output directory (embedded, no server), artifacts beside it;
MLFLOW_TRACKING_URI (or tracking.tracking_uri) points at a server instead.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from loopdistill.config import RunConfig, TrackingConfig


def tracking_uri(config: TrackingConfig) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db."""
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(config.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _experiment_id(client: MlflowClient, config: TrackingConfig, uri: str) -> str:
    found = client.get_experiment_by_name(config.experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # Without this MLflow puts artifacts under ./mlruns of whatever directory the driver runs in.
        location = (Path(config.output_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(config.experiment, artifact_location=location)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


class Tracker:
    """Wraps one MLflow run. Use as a context manager: the run ends FINISHED, or FAILED on an error
    (everything logged before the error stays in the store)."""

    def __init__(self, config: RunConfig, run_dir: Path, run_name: Optional[str] = None, run_id: Optional[str] = None):
        # An explicit client, not mlflow.set_tracking_uri: that also sets $MLFLOW_TRACKING_URI for the
        # whole process, and every later run (or subprocess) would then log into this store.
        self.uri = tracking_uri(config.tracking)
        self.client = MlflowClient(self.uri)
        self.experiment_id = _experiment_id(self.client, config.tracking, self.uri)
        self.config = config
        self.run_dir = run_dir
        self.run_name = run_name
        self.resume_id = run_id  # set: continue this run (resume) instead of starting one

    def __enter__(self) -> "Tracker":
        if self.resume_id:
            self.run = self.client.get_run(self.resume_id)
            self.client.update_run(self.resume_id, status="RUNNING")
            self.client.set_tag(self.resume_id, "resumed", "true")
            return self
        self.run = self.client.create_run(self.experiment_id, run_name=self.run_name)
        params = [Param(k, str(v)) for k, v in flatten(self.config.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow's per-batch limit on params
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        self.client.set_tag(self.run_id, "run_dir", str(self.run_dir))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None:
            self.client.set_tag(self.run_id, "error", f"{exc_type.__name__}: {exc}"[:4000])
        self.client.set_terminated(self.run_id, status="FAILED" if exc is not None else "FINISHED")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
