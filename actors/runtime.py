"""Small helpers every actor uses: device choice, CPU threads, busy-time accounting and fault injection
(chaos tests only; free when off)."""
from __future__ import annotations

import os
import time
from contextlib import contextmanager


def pick_device(num_gpus: float) -> str:
    """"cuda" when the actor was given a GPU and one is visible, else "cpu"."""
    import torch

    return "cuda" if num_gpus > 0 and torch.cuda.is_available() else "cpu"


def use_all_cpu_threads() -> None:
    """Let torch use every core. The loop's stages run one after another (predict, generate, train),
    so the actor that is working should have the machine; Ray's default of one thread per
    reserved CPU would leave cores idle."""
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))


class BusyClock:
    """Seconds an actor spent inside its work methods: the accelerator-seconds the ledger charges
    (on a CPU-only actor, the CPU wall time of that actor's work)."""

    def __init__(self) -> None:
        self.total_s = 0.0

    @contextmanager
    def measure(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.total_s += time.perf_counter() - start


FAULTS_ENV = "LOOPDISTILL_FAULTS"  # comma-separated fault points, e.g. "teacher.generate,student.predict"
FAULT_DIR_ENV = "LOOPDISTILL_FAULT_DIR"  # where a fired fault leaves its marker


def _fault_points() -> frozenset[str]:
    """The fault points named in $LOOPDISTILL_FAULTS, or none unless $LOOPDISTILL_FAULT_DIR is set too."""
    if not os.environ.get(FAULT_DIR_ENV):
        return frozenset()
    return frozenset(p.strip() for p in os.environ.get(FAULTS_ENV, "").split(",") if p.strip())


# Read once, at import: an actor's environment is fixed when its process starts (Ray applies a
# runtime_env's env_vars before any task runs), and the trainer calls inject_fault every optimizer step,
# so with no faults set a call is one set lookup. Empty (falsy) unless both variables are set.
FAULT_POINTS: frozenset[str] = _fault_points()
_FAULT_DIR = os.environ.get(FAULT_DIR_ENV, "")


def inject_fault(point: str) -> None:
    """Chaos testing: end this process abruptly (as a kill would, exit status 137) at `point` when it
    is listed in $LOOPDISTILL_FAULTS, once: a marker `<point>.fired` in $LOOPDISTILL_FAULT_DIR lets the
    restarted actor go on. Does nothing unless both variables were set when this process started."""
    if point not in FAULT_POINTS:
        return
    marker = os.path.join(_FAULT_DIR, f"{point}.fired")
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os._exit(137)
