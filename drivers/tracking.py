"""MLflow tracking: one run per experiment; only the driver writes to it.

Default store: a SQLite file under the output directory (embedded, no server), artifacts beside it in
`<output_dir>/mlartifacts`; MLFLOW_TRACKING_URI (or tracking.tracking_uri) points at a server instead.

MLflow stores a local artifact location as an absolute path. A `runs/` folder copied to another machine
(or path) is made whole again by `python -m drivers.tracking relocate RUNS_DIR` (run once after copying;
any later loopdistill run on that folder also does it): it points the store's experiments and runs at
`RUNS_DIR/mlartifacts`. With a tracking server (`mlflow server --artifacts-destination DIR`, see
cluster/mlflow.yaml) the store holds `mlflow-artifacts:/` URIs relative to DIR, so a copy of the
server's volume opens as it is.

Everything logged passes through loopdistill.secrets.redact (URL credentials become '***').
"""
from __future__ import annotations

import getpass
import os
import shlex
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from loopdistill.config import RunConfig, TrackingConfig
from loopdistill.secrets import REDACTED, redact

REPO_ROOT = Path(__file__).resolve().parents[1]
# MLflow 3 opens an experiment without this tag on its GenAI (traces) page; this value selects the
# classic runs table with metrics and charts.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def tracking_uri(config: TrackingConfig) -> str:
    """tracking.tracking_uri, else $MLFLOW_TRACKING_URI, else sqlite:///<output_dir>/mlflow.db."""
    if config.tracking_uri:
        return config.tracking_uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(config.output_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    relocate(root)
    return f"sqlite:///{root / 'mlflow.db'}"


def relocate(runs_dir: str | Path) -> int:
    """Point the local store `runs_dir/mlflow.db` at `runs_dir/mlartifacts` when its artifact
    locations name another folder's: the folder was copied or moved (each copy keeps to its own
    artifacts). Returns the number of experiments rewritten (0: nothing to do, or no store there)."""
    root = Path(runs_dir).resolve()
    db, here = root / "mlflow.db", (root / "mlartifacts").as_uri()
    if not db.is_file():
        return 0
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("select experiment_id, artifact_location from experiments").fetchall()
        except sqlite3.OperationalError:  # a store MLflow has not initialised yet
            return 0
        changed = 0
        for experiment_id, location in rows:
            if not location or not location.startswith("file://") or "/mlartifacts" not in location:
                continue
            old_root = location[: location.rindex("/mlartifacts")] + "/mlartifacts"
            if old_root == here:
                continue
            conn.execute("update experiments set artifact_location = replace(artifact_location, ?, ?) where experiment_id = ?", (old_root, here, experiment_id))
            conn.execute("update runs set artifact_uri = replace(artifact_uri, ?, ?) where experiment_id = ?", (old_root, here, experiment_id))
            changed += 1
    return changed


def _experiment_id(client: MlflowClient, config: TrackingConfig, uri: str) -> str:
    found = client.get_experiment_by_name(config.experiment)
    if found is not None:
        if found.tags.get("mlflow.experimentKind") is None:
            client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        # Without this MLflow puts artifacts under ./mlruns of whatever directory the driver runs in.
        location = (Path(config.output_dir).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(config.experiment, artifact_location=location, tags=EXPERIMENT_KIND)


def git_commit() -> Optional[str]:
    """The checkout's HEAD commit (with '-dirty' when tracked files changed), else the commit the
    Docker image recorded beside the code (GIT_COMMIT at the repository root; an image has no .git),
    else $LOOPDISTILL_GIT_COMMIT (a submitted job's working dir has no .git), else None."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
            return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        recorded = (REPO_ROOT / "GIT_COMMIT").read_text().strip()
    except OSError:
        recorded = ""
    return recorded or os.environ.get("LOOPDISTILL_GIT_COMMIT") or None


def source_tags() -> dict[str, str]:
    """MLflow's system tags for where a run came from: the command line (redacted), the git commit."""
    program = "python -m drivers.cli" if sys.argv[0].endswith("drivers/cli.py") else Path(sys.argv[0]).name
    command = redact(" ".join([program, shlex.join(_mask_env_values(sys.argv[1:]))]))
    tags = {"mlflow.source.name": command[:500], "mlflow.source.type": "LOCAL", "mlflow.user": _user()}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["git_commit"] = commit
    return tags


def _mask_env_values(args: list[str]) -> list[str]:
    """`--env KEY=VALUE` (`loopdistill study`) may carry an API key: keep KEY, replace VALUE by '***'."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--env=") and "=" in arg[len("--env="):]:
            out[i] = f"{arg.split('=', 2)[0]}={arg.split('=', 2)[1]}={REDACTED}"
        elif i > 0 and out[i - 1] == "--env" and "=" in arg:
            out[i] = f"{arg.split('=', 1)[0]}={REDACTED}"
    return out


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for the uid (containers)
        return str(os.getuid())


def parent_tag(config: TrackingConfig) -> dict[str, str]:
    """MLflow's nesting tag when the run belongs to a study's parent run (tracking.parent_run_id)."""
    return {"mlflow.parentRunId": config.parent_run_id} if config.parent_run_id else {}


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
        self._interrupted = False  # mark_interrupted ran (it is called twice on an interrupt)

    def __enter__(self) -> "Tracker":
        if self.resume_id:
            try:
                self.run = self.client.get_run(self.resume_id)
            except MlflowException as err:  # e.g. resumed from another folder: a relative output_dir names another store
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                from drivers.checkpoint import ResumeError

                raise ResumeError(
                    f"cannot resume: MLflow run {self.resume_id} is not in the store {redact(self.uri)} "
                    f"({err.error_code}); resume from the folder the run started in, or set MLFLOW_TRACKING_URI to its store"
                ) from None
            self.client.update_run(self.resume_id, status="RUNNING")
            self.client.set_tag(self.resume_id, "resumed", "true")
            return self
        self.run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={**source_tags(), "run_dir": str(self.run_dir), **parent_tag(self.config.tracking)})
        params = [Param(k, str(v)) for k, v in flatten(redact(self.config.model_dump(mode="json"))).items()]
        for start in range(0, len(params), 100):  # MLflow's per-batch limit on params
            self.client.log_batch(self.run_id, params=params[start : start + 100])
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """FINISHED; KILLED on Ctrl-C or SIGTERM (a KeyboardInterrupt; the tag `interrupted_by` names the
        signal); FAILED with an `error` tag otherwise."""
        if isinstance(exc, KeyboardInterrupt):
            self.mark_interrupted()
            return
        status = "FINISHED"
        if exc is not None:
            status = "FAILED"
            self.client.set_tag(self.run_id, "error", redact(f"{exc_type.__name__}: {exc}")[:4000])
        self.client.set_terminated(self.run_id, status=status)

    def mark_interrupted(self) -> None:
        """End the run KILLED, tagged `interrupted_by` SIGTERM or SIGINT (Ctrl-C). Called as soon as the
        interrupt reaches the driver, before the actors stop: a SIGTERM to the whole process group also
        stops a local Ray, whose calls then hang until Ray ends the process."""
        from drivers.checkpoint import sigterm_received

        if self._interrupted:  # _drive marks it first; Tracker.__exit__ then has nothing to do
            return
        self._interrupted = True
        self.client.set_tag(self.run_id, "interrupted_by", "SIGTERM" if sigterm_received() else "SIGINT")
        self.client.set_terminated(self.run_id, status="KILLED")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_series(self, key: str, values: list[float], first_step: int = 0) -> None:
        """One metric with one point per element, steps first_step, first_step + 1, ... (e.g. the
        trainer's loss per optimizer step)."""
        now = int(time.time() * 1000)
        batch = [Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)]
        for start in range(0, len(batch), 1000):  # MLflow's per-batch limit on metrics
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path=artifact_path)

    def log_artifact(self, local_file: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(local_file), artifact_path=artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        """Save a matplotlib figure as the artifact `artifact_file` (e.g. "plots/iter_01/forecast.png")
        and close it (figures otherwise accumulate in pyplot's registry)."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()])


if __name__ == "__main__":  # python -m drivers.tracking relocate RUNS_DIR
    if len(sys.argv) != 3 or sys.argv[1] != "relocate":
        sys.exit("usage: python -m drivers.tracking relocate RUNS_DIR")
    print(f"{relocate(sys.argv[2])} experiment(s) now point at {Path(sys.argv[2]).resolve() / 'mlartifacts'}")
