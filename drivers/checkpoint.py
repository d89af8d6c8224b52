"""The run directory's state file: what is finished, written atomically after every stage.

`state.json` names the iteration in progress, the stages of it already done (their Parquet tables are
in `iter_NN/`), the partial metrics of that iteration, the ledger, the current adapter and the MLflow
run. `loopdistill run --resume RUN_DIR` reads it and continues after the last completed stage.
A run stopped by Ctrl-C or SIGTERM ends in `RunInterrupted`, naming the directory to resume.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

STATE_FILE = "state.json"


class ResumeError(RuntimeError):
    """A run directory cannot be resumed (missing or unreadable state; the path is named)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM stopped a run; `run_dir` is the directory `run --resume` continues,
    `signum` the signal that stopped it (the command line exits with 128 + signum: 130 or 143)."""

    def __init__(self, run_dir: str, signum: int = signal.SIGINT):
        super().__init__(run_dir)
        self.run_dir = run_dir
        self.signum = int(signum)


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by the handler `stop_on_sigterm` installs when SIGTERM arrives (`kill`,
    `ray job stop`, a Kubernetes pod deletion). A KeyboardInterrupt, so that everything that stops a run
    cleanly on Ctrl-C (the MLflow run marked KILLED, the actors shut down, state.json kept) does so on
    SIGTERM too. Ray turns a KeyboardInterrupt raised inside `ray.get` into a plain KeyboardInterrupt:
    `sigterm_received()` tells the two apart."""


# Whether a `stop_on_sigterm` block is active, whether SIGTERM arrived in it, and the unraisable-exception
# hook it replaced.
_sigterm = {"active": False, "received": False, "at": 0.0, "unraisablehook": sys.unraisablehook}
REPEAT_GRACE_S = 30.0  # a repeated SIGTERM within this many seconds is part of the same stop


def _on_sigterm(signum, frame) -> None:
    # A second SIGTERM must not break off the clean stop the first one began; but if the first was
    # swallowed (third-party code catching BaseException), a later one must still stop the run.
    if _sigterm["received"] and time.monotonic() - _sigterm["at"] < REPEAT_GRACE_S:
        return
    _sigterm["received"], _sigterm["at"] = True, time.monotonic()
    raise Terminated()


def _resend_sigterm() -> None:
    """The delayed re-delivery of _on_unraisable: only while the block is still active (after it, the
    previous handler, often SIG_DFL, would kill the process without any clean-up)."""
    if _sigterm["active"]:
        os.kill(os.getpid(), signal.SIGTERM)


def _on_unraisable(hook_args) -> None:
    """Python runs a signal handler wherever the main thread is, also inside a weakref callback or a
    `__del__` (e.g. SQLAlchemy's, under MLflow), which swallow exceptions: the run would go on and
    ignore the SIGTERM. Deliver the signal again, so that it is raised where it propagates; from
    another thread a moment later, since here (in this hook) it would be swallowed again."""
    if isinstance(hook_args.exc_value, Terminated) and _sigterm["active"]:
        _sigterm["received"] = False
        threading.Timer(0.05, _resend_sigterm).start()
        return
    _sigterm["unraisablehook"](hook_args)


def sigterm_received() -> bool:
    """Whether SIGTERM arrived inside the current (or last) `stop_on_sigterm` block."""
    return _sigterm["received"]


def rearm_sigterm() -> None:
    """Install the SIGTERM handler again inside a `stop_on_sigterm` block (no-op outside one, or outside
    the main thread): `ray.init` replaces the process's SIGTERM handler with its own, which exits at
    once with status 1 (after killing a local Ray's processes), leaving the MLflow run RUNNING."""
    if _sigterm["active"] and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within the block SIGTERM stops the process like Ctrl-C: the main thread raises `Terminated` (once;
    later SIGTERMs are ignored while the stop proceeds). The previous handler is restored on leaving.
    Outside the main thread (where Python cannot install handlers) the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _sigterm.update(active=True, received=False, unraisablehook=sys.unraisablehook)
    sys.unraisablehook = _on_unraisable
    try:
        yield
    finally:
        _sigterm["active"] = False
        sys.unraisablehook = _sigterm["unraisablehook"]
        # None: the previous handler was not installed from Python; the default is the closest.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


@dataclass
class RunState:
    """Everything a resume needs: progress, partial metrics, spend, adapters and the gate's decisions
    (plain JSON types; one state.json per run directory)."""

    mlflow_run_id: str
    iteration: int = 0  # the iteration in progress (== iterations completed)
    # of `iteration`: predict, select, generate, fidelity, train, evaluate, then the gate's retrain1, retrain2, ...
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
