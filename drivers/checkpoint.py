"""The run directory's state file: what is finished, written atomically after every stage.

`state.json` names the iteration in progress, the stages of it already done (their Parquet tables are
in `iter_NN/`), the partial metrics of that iteration, the ledger, the current adapter and the MLflow
run. `loopdistill run --resume RUN_DIR` reads it and continues after the last completed stage.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

STATE_FILE = "state.json"


class ResumeError(RuntimeError):
    """A run directory cannot be resumed (missing or unreadable state; the path is named)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; `run_dir` is the directory `run --resume` continues."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir)
        self.run_dir = run_dir


@dataclass
class RunState:
    """Everything a resume needs: progress, partial metrics, spend, adapters and the gate's decisions
    (plain JSON types; one state.json per run directory)."""

    mlflow_run_id: str
    iteration: int = 0  # the iteration in progress (== iterations completed)
    # of `iteration`: predict, select, generate, train, evaluate, then the gate's retrain1, retrain2, ...
    stages_done: list[str] = field(default_factory=list)
    partial_metrics: dict[str, float] = field(default_factory=dict)  # of `iteration`
    baseline_done: bool = False
    baseline: dict[str, float] = field(default_factory=dict)  # eval/* figures before any training
    adapter_dir: Optional[str] = None
    ledger: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    stop_reason: str = ""
    # The calibration gate (drivers/gating.py): the last accepted iteration (-1 = the untrained
    # baseline), its adapter and validation metrics; iterations whose synthetic rows are excluded from
    # training (rolled back); the training set's current synthetic fraction (None = the config's);
    # every decision taken (a dict per decision, in order); and a gate/forecast stop that a resume
    # must honour instead of running on.
    accepted_iteration: int = -1
    accepted_adapter: Optional[str] = None
    accepted_metrics: dict[str, float] = field(default_factory=dict)
    excluded_iterations: list[int] = field(default_factory=list)
    synthetic_fraction: Optional[float] = None
    gate_decisions: list[dict] = field(default_factory=list)
    halt_reason: str = ""

    def save(self, run_dir: Path) -> None:
        """Write state.json atomically (a crash leaves the previous or the new file, never half)."""
        tmp = run_dir / (STATE_FILE + ".tmp")
        with open(tmp, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(run_dir / STATE_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> "RunState":
        """The state saved in run_dir/state.json.

        Raises:
            ResumeError: the file is missing, not JSON, or has unknown fields (the path is named).
        """
        path = run_dir / STATE_FILE
        if not path.is_file():
            raise ResumeError(f"cannot resume {run_dir}: no {STATE_FILE} (not a run directory, or it failed before starting)")
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:  # ValueError: JSON or its UTF-8; TypeError: wrong fields
            raise ResumeError(f"cannot resume {run_dir}: {path} is unreadable ({str(err).splitlines()[0]})") from None

    def complete_stage(self, stage: str, metrics: dict[str, float]) -> None:
        self.stages_done.append(stage)
        self.partial_metrics = dict(metrics)

    def complete_iteration(self, metrics: dict[str, float]) -> None:
        self.history.append(dict(metrics))
        self.iteration += 1
        self.stages_done, self.partial_metrics = [], {}
