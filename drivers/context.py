"""What the stages of the loop share (RunContext), what each is given (StageInputs) and what each
returns (StageResult). A stage reads the context and its inputs and returns tables and metrics; the
runner (drivers/runner.py) writes the tables, merges the metrics, checkpoints and logs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, Optional

import pyarrow as pa
import ray

from drivers.actor_group import Actors
from drivers.budget import BudgetLedger
from drivers.checkpoint import RunState
from drivers.teacher_client import TeacherClient
from loopdistill.config import RunConfig
from loopdistill.tasks import Splits, Task


@dataclass
class StageResult:
    """What one stage produced.

    tables: Arrow tables by name; the runner writes each as iter_NN/<name>.parquet.
    metrics: figures with units in their names (`synth/kept`, `trainer/train_loss`), merged by the
        runner into the iteration's metrics (logged at step iteration + 1).
    stop_reason: non-empty when the run must stop here (a budget stop, a gate halt, the forecast);
        a stage that stops on its budget returns no tables and is not marked done.
    series: per-step curves (name -> values at steps 1, 2, ...; the trainer's loss per optimizer
        step), logged by the runner.
    """

    tables: dict[str, pa.Table] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    stop_reason: str = ""
    series: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class StageInputs:
    """What a stage of iteration `iteration` is given.

    tables: this iteration's tables so far (predictions, scores, selected, synthetic, val_predictions:
        whatever the earlier stages returned or left on disk).
    synthetic: the cumulative synthetic set S (SYNTHETIC rows) of the finished generate stages,
        this iteration's included once its generate stage is done.
    metrics: the iteration's metrics so far (read-only).
    """

    iteration: int
    tables: Mapping[str, pa.Table]
    synthetic: pa.Table
    metrics: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class SplitRefs:
    """Object refs of the splits the student and trainer read every iteration (put once)."""

    seeds: ray.ObjectRef
    validation: ray.ObjectRef
    test: ray.ObjectRef
    val_train: ray.ObjectRef  # the validation split as training examples (the trainer's best-checkpoint pick)


@dataclass
class RunContext:
    """One run's long-lived parts, read by every stage.

    Stages change the ledger (charges) and the run state fields they own (train: adapter_dir; gate:
    the gate's fields and halt_reason), never state.json: that is the runner's, through `checkpoint`
    (a stage done, its tables written) and `save_state`, which the gate calls between its decisions.
    """

    config: RunConfig
    task: Task
    splits: Splits
    actors: Actors
    teacher: TeacherClient
    ledger: BudgetLedger
    state: RunState
    run_dir: Path
    refs: SplitRefs
    bar: Optional[object] = None  # drivers.progress.StageTask of the running stage (None: no progress line)
    checkpoint: Callable[[int, str, StageResult], None] = lambda t, name, result: None
    save_state: Callable[[], None] = lambda: None
    seen_seconds: dict[str, float] = field(default_factory=lambda: {"teacher": 0.0, "student": 0.0, "reward": 0.0})
    _tokenizer: object = None

    def iter_dir(self, t: int) -> Path:
        """run_dir/iter_NN: iteration t's tables, adapters and forecast."""
        return self.run_dir / f"iter_{t:02d}"

    def tokenizer(self):
        """The student's tokenizer (loaded on first use, in the driver), for the fidelity metrics."""
        if self._tokenizer is None:
            from loopdistill.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.student.model.path)
        return self._tokenizer

    def spend_metrics(self) -> dict[str, float]:
        """Charge the busy seconds the teacher, student and reward model accumulated since the last
        call (the trainer is charged per train call), then every ledger figure (budget/*) and the
        teacher's cumulative counters (teacher/failed_requests, ...)."""
        totals = {"teacher": self.teacher.busy_seconds(), "student": ray.get(self.actors.student.busy_seconds.remote())}
        if self.actors.reward is not None:
            totals["reward"] = ray.get(self.actors.reward.busy_seconds.remote())
        for role, total in totals.items():
            # An actor restarted by Ray counts from 0 again: a total below the last one seen is what the
            # new process did (charging the difference would refund seconds already spent).
            seen = self.seen_seconds[role]
            self.ledger.charge_seconds(role, total - seen if total >= seen else total)
            self.seen_seconds[role] = total
        return {**self.ledger.metrics(), **self.teacher.stats()}


def make_context(config: RunConfig, task: Task, splits: Splits, actors: Actors, run_dir: Path, state: RunState) -> RunContext:
    """The context of a run over started actors: the ledger restored from `state` and reconciled with
    the teacher's spend journal (which holds every request sent, settled or open and charged in full,
    even if the driver died mid-stage), the teacher client, and the splits put in the object store."""
    from loopdistill.training_data import to_train_examples

    ledger = BudgetLedger(config.budget)
    ledger.restore(state.ledger)
    ledger.reconcile_teacher(actors.teacher.paid())
    refs = SplitRefs(ray.put(splits.seeds), ray.put(splits.validation), ray.put(splits.test),
                     ray.put(to_train_examples(task, splits.validation)))
    teacher = TeacherClient(actors.teacher, ledger, config.loop.seed, config.teacher)
    return RunContext(config, task, splits, actors, teacher, ledger, state, run_dir, refs)
