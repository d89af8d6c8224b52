"""What a run shows on the terminal: a progress line per stage, a table of the final figures, and the
library noise kept in a log file of the run directory instead.

Stages that work through rows (the student's predictions on the pool, validation and test) show items
done/total, generated tokens/s and an ETA; stages that the actors run as one call (generate, train) show
elapsed time. Every line carries what is left of the budget. Off when stderr is not a terminal (CI,
`ray job submit` logs): then each stage logs one line instead.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from loopdistill.secrets import RedactingFilter

log = logging.getLogger("loopdistill")
LOG_FILE = "run.log"
# Loggers of libraries that repeat the same warnings every iteration; kept out of the terminal.
NOISY = ("absl", "transformers", "torch", "deepspeed", "datasets", "urllib3", "httpx", "filelock", "mlflow", "alembic", "ray")
# Read by the actors' processes (Ray workers inherit the driver's environment for local Ray).
QUIET_ENV = {"MLFLOW_CONFIGURE_LOGGING": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error", "TF_CPP_MIN_LOG_LEVEL": "2", "GLOG_minloglevel": "2", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}


def setup_logging(verbose: bool) -> None:
    """Terminal logging for the CLI: loopdistill's own INFO lines; other libraries only at ERROR unless
    `verbose`. URL credentials are redacted on every handler (see attach_run_log for the file)."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    handler = _CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    if not verbose:
        handler.addFilter(lambda record: record.name.startswith("loopdistill") or record.levelno >= logging.ERROR)
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
        warnings.filterwarnings("ignore")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # its tqdm bars (GGUF conversion, weight loading) write to the terminal
        for name in NOISY:  # some (mlflow) print through handlers of their own: send them to the root
            logger = logging.getLogger(name)
            logger.handlers[:] = []
            logger.propagate = True
    root.handlers[:] = [handler]
    logging.captureWarnings(True)


class _CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: while the progress display is live, rich swaps in
    a proxy that prints log lines above the progress lines instead of through them."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def attach_run_log(run_dir: Path) -> logging.Handler:
    """Send every log record (all libraries, DEBUG excluded) to `run_dir/run.log`, redacted.
    Returns the handler, for detach_run_log."""
    handler = logging.FileHandler(run_dir / LOG_FILE)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    return handler


def detach_run_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


class RunProgress:
    """One rich progress line per stage of the loop. `budget_left` returns a short text of what the
    budget has left (shown on each line)."""

    def __init__(self, budget_left: Callable[[], str], enabled: Optional[bool] = None):
        self.budget_left = budget_left
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.console = Console(stderr=True)
        self.bar = Progress(
            SpinnerColumn(), TextColumn("{task.description:<22}"), BarColumn(bar_width=24), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            TextColumn("budget left: {task.fields[budget]}"), console=self.console, transient=False, disable=not self.enabled,
        )

    def __enter__(self) -> "RunProgress":
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    @contextmanager
    def stage(self, label: str, total: Optional[int] = None) -> Iterator["StageTask"]:
        """A progress line for one stage; `total` items (None: elapsed time only)."""
        task = self.bar.add_task(label, total=total, rate="", budget=self.budget_left())
        handle = StageTask(self, task)
        try:
            yield handle
        except BaseException:
            self.bar.stop_task(task)  # failed or interrupted: the line stays as far as it got
            raise
        self.bar.update(task, budget=self.budget_left())
        if total is None:
            self.bar.update(task, total=1, completed=1)
        if not self.enabled:
            log.info("%s done in %.1f s (budget left: %s)", label, self.bar.tasks[task].elapsed or 0.0, self.budget_left())


class StageTask:
    """Advances one stage's progress line by items and generated tokens."""

    def __init__(self, owner: RunProgress, task):
        self.owner, self.task, self.tokens = owner, task, 0

    def advance(self, items: int, tokens: int = 0) -> None:
        self.tokens += tokens
        elapsed = self.owner.bar.tasks[self.task].elapsed or 0.0
        rate = f"{self.tokens / elapsed:,.0f} tok/s" if elapsed > 0 and self.tokens else ""
        self.owner.bar.update(self.task, advance=items, rate=rate)


def predict_chunked(method, table: pa.Table, chunk_rows: int, stage: Optional[StageTask], *args) -> pa.Table:
    """`ray.get(method.remote(table, *args))`, sent as chunks of `chunk_rows` rows so `stage` advances
    as each chunk returns (rows and output tokens). The actor runs its calls in order; chunk_rows should
    be the engine's own batch size (transformers) or the whole table (vLLM, which batches one call
    continuously), so that chunking costs nothing."""
    if stage is None or table.num_rows <= chunk_rows:
        out = ray.get(method.remote(table, *args))
        if stage is not None:
            stage.advance(out.num_rows, int(pc.sum(out.column("output_tokens")).as_py() or 0) if out.num_rows else 0)
        return out
    pending = [method.remote(table.slice(start, chunk_rows), *args) for start in range(0, table.num_rows, chunk_rows)]
    parts = []
    for ref in pending:
        part = ray.get(ref)
        stage.advance(part.num_rows, int(pc.sum(part.column("output_tokens")).as_py() or 0) if part.num_rows else 0)
        parts.append(part)
    return pa.concat_tables(parts)


def final_table(summary, history: list[dict], baseline: dict[str, float]) -> Table:
    """The figures a run ends with: baseline and each iteration's validation/test accuracy, ECE,
    synthetic set size and teacher tokens."""
    table = Table(title=f"{Path(summary.run_dir).name}: {summary.stop_reason}")
    columns = (("val acc", "eval/val_accuracy", "{:.3f}"), ("test acc", "eval/test_accuracy", "{:.3f}"), ("val ECE", "eval/val_ece", "{:.3f}"),
               ("synthetic", "synth/total", "{:.0f}"), ("teacher tokens", "budget/teacher_tokens", "{:,.0f}"), ("train loss", "trainer/train_loss", "{:.3f}"))
    table.add_column("iteration")
    for header, _, _ in columns:
        table.add_column(header, justify="right")
    rows = [("baseline", baseline)] + [(str(int(m.get("iteration", i))), m) for i, m in enumerate(history)]
    for name, metrics in rows:
        table.add_row(name, *["-" if metrics.get(key) is None else fmt.format(metrics[key]) for _, key, fmt in columns])
    return table
