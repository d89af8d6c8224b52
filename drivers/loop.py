"""The iteration driver: Algorithm 1 of Kessler et al. 2025 (arXiv 2512.00884), top to bottom.

    for t in 0..T-1:
        predict  -> the student answers the seed pool D0 (greedy, with logprobs)
        score    -> a strategy scores every seed from the student's answers
        select   -> the m highest-scoring seeds
        generate -> the teacher pool rewrites them into new questions and answers them; near-duplicates
                    (ROUGE-L > 0.7) and unparseable outputs are dropped
        train    -> a fresh LoRA on everything generated so far, best checkpoint on validation
        evaluate -> validation/test accuracy and ECE of the new adapter

Every stage's table is written as Parquet under the run directory; after each iteration the driver
logs metrics (step = iteration) and artifacts to MLflow and writes `state.json`, so an error in
iteration t leaves iterations < t intact on disk and in MLflow.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from drivers import selection, synthesis
from drivers.budget import BudgetLedger
from drivers.calibration import expected_calibration_error
from drivers.tracking import Tracker
from loopdistill.config import RunConfig
from loopdistill.schemas import SEEDS, SYNTHETIC, TEACHER_RESPONSES, TRAIN_EXAMPLES, make_table, project
from tasks import Splits, Task, get_task

log = logging.getLogger("loopdistill")


@dataclass
class RunSummary:
    """What a finished (or budget-stopped) run produced."""

    run_dir: str
    mlflow_run_id: str
    iterations_completed: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)


@dataclass
class Actors:
    """Handles of the long-lived actors of one run."""

    teacher: object  # actors.teacher.TeacherPool
    student: object  # ray ActorHandle of StudentScorerActor
    trainer: object  # actors.trainer.TrainerGroup

    def shutdown(self) -> None:
        self.teacher.shutdown()
        self.trainer.shutdown()
        ray.kill(self.student)


def start_actors(config: RunConfig, run_dir: Path) -> Actors:
    """Create the teacher pool, the student scorer and the trainer group (resources from config).
    The teacher's paid-once request cache lives in the run directory."""
    from actors.student import StudentScorerActor
    from actors.teacher import TeacherPool
    from actors.trainer import TrainerGroup

    student = ray.remote(StudentScorerActor).options(
        num_cpus=config.student.num_cpus, num_gpus=config.student.num_gpus, max_restarts=1, max_task_retries=1
    )
    return Actors(
        teacher=TeacherPool(config.teacher, config.task.name, str(run_dir / "teacher_cache.sqlite")),
        student=student.remote(config.student, config.task.name),
        trainer=TrainerGroup(config.trainer, config.student.model),
    )


class ClosedLoop:
    """One run of the loop over already started actors; `run()` iterates until done or out of budget."""

    def __init__(self, config: RunConfig, task: Task, splits: Splits, actors: Actors, tracker: Tracker, run_dir: Path):
        self.config, self.task, self.splits, self.actors = config, task, splits, actors
        self.tracker, self.run_dir = tracker, run_dir
        self.ledger = BudgetLedger(config.budget)
        self.synthetic = make_table(SYNTHETIC, [])
        self.seed_rows = splits.seeds.to_pylist()
        self.seeds_ref = ray.put(splits.seeds)
        self.val_ref = ray.put(splits.validation)
        self.test_ref = ray.put(splits.test)
        self.val_train_ref = ray.put(to_train_examples(task, splits.validation))
        self.adapter_dir: Optional[str] = None
        self.trainer_seconds = 0.0  # summed over ranks and iterations
        self.history: list[dict] = []

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> tuple[int, str]:
        """Returns (iterations completed, stop reason)."""
        self.tracker.log_metrics(self.evaluate(prefix="baseline"), step=0)
        for t in range(self.config.loop.iterations):
            reason = self.ledger.exhausted()
            if reason:
                return t, reason
            done, reason = self.iteration(t)
            if not done:
                return t, reason
        return self.config.loop.iterations, "completed"

    def iteration(self, t: int) -> tuple[bool, str]:
        """Run stages 1-5 of iteration t. Returns (completed, reason when not)."""
        out_dir = self.run_dir / f"iter_{t:02d}"
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics: dict[str, float] = {"iteration": t}
        with self.stage("predict", metrics):
            predictions = ray.get(self.actors.student.predict.remote(self.seeds_ref))
        with self.stage("select", metrics):
            selected, scores = self.select(predictions, t, metrics)
        with self.stage("generate", metrics):
            new, reason = self.generate(selected, t, metrics)
        if reason:
            return False, reason
        self.synthetic = pa.concat_tables([self.synthetic, new])
        metrics["synth/total"] = self.synthetic.num_rows
        with self.stage("train", metrics):
            self.train(t, out_dir, metrics)
        with self.stage("evaluate", metrics):
            metrics.update(self.evaluate(prefix="eval"))
        tables = {"predictions": predictions, "scores": scores, "selected": selected, "synthetic": new}
        self.finish_iteration(t, out_dir, tables, metrics)
        return True, ""

    @contextmanager
    def stage(self, name: str, metrics: dict):
        start = time.perf_counter()
        log.info("stage %s", name)
        yield
        metrics[f"time/{name}_s"] = time.perf_counter() - start

    # --- stages ------------------------------------------------------------------------------
    def select(self, predictions: pa.Table, t: int, metrics: dict) -> tuple[pa.Table, pa.Table]:
        """Score the pool and return (selected SEEDS rows, SCORES)."""
        loop = self.config.loop
        scores = selection.score(loop.strategy, predictions, seed=loop.seed + t)
        values = scores.column("score").to_numpy()
        idx = selection.select(values, loop.seeds_per_iteration, loop.sampling, loop.softmax_temperature, loop.seed + t)
        losses = predictions.column("loss").to_numpy()
        metrics.update(
            {
                "predict/pool_accuracy": float(np.mean(predictions.column("correct").to_numpy(zero_copy_only=False))),
                "select/pool_mean_score": float(values.mean()),
                "select/selected_mean_score": float(values[idx].mean()),
                "select/pool_mean_loss": float(losses.mean()),
                "select/selected_mean_loss": float(losses[idx].mean()),
                "select/selected": len(idx),
            }
        )
        return self.splits.seeds.take(pa.array(idx, pa.int64())), scores

    def generate(self, selected: pa.Table, t: int, metrics: dict) -> tuple[pa.Table, str]:
        """Rewrite, dedup, answer. Returns (SYNTHETIC rows of this iteration, stop reason or "")."""
        loop, task = self.config.loop, self.task
        chosen = selected.to_pylist()
        requests = synthesis.rewrite_requests(task, chosen, self.seed_rows, loop.few_shot_k, t, loop.seed)
        rewrites, reason = self.ask_teacher(requests, seed=loop.seed + 2 * t)
        if reason:
            return make_table(SYNTHETIC, []), reason
        candidates, bad_rewrites = synthesis.parse_rewrites(task, chosen, rewrites)
        earlier = self.synthetic.column("question").to_pylist()
        kept, dropped = synthesis.Deduplicator(task, loop.dedup_rouge_l).filter(candidates, earlier)
        left = self.ledger.samples_left()
        kept = kept if left is None else kept[:left]
        answers, reason = self.ask_teacher(synthesis.answer_requests(task, kept, t), seed=loop.seed + 2 * t + 1)
        if reason:
            return make_table(SYNTHETIC, []), reason
        new, bad_answers = synthesis.build_synthetic(task, kept[: answers.num_rows], answers, t, loop.strategy)
        self.ledger.charge_samples(new.num_rows)
        metrics.update(
            {
                "synth/unparseable_rewrites": bad_rewrites,
                "synth/deduplicated": dropped,
                "synth/unparseable_answers": bad_answers,
                "synth/kept": new.num_rows,
            }
        )
        return new, ""

    def ask_teacher(self, requests: pa.Table, seed: int) -> tuple[pa.Table, str]:
        """Send the requests the budget can pay for (reserved at prompt + max_new_tokens), settle at
        the real counts. Returns (responses, stop reason when not even one request is affordable)."""
        if requests.num_rows == 0:
            return make_table(TEACHER_RESPONSES, []), ""
        prompt_tokens = self.actors.teacher.count_tokens(requests.column("prompt").to_pylist())
        n = self.ledger.affordable_requests(prompt_tokens, self.config.teacher.max_new_tokens)
        if n == 0:
            return make_table(TEACHER_RESPONSES, []), "budget exhausted: the teacher budget cannot pay for one more request"
        responses = self.actors.teacher.generate(requests.slice(0, n), seed)
        paid = responses.filter(pc.invert(responses.column("cached")))
        self.ledger.charge_teacher(
            pc.sum(paid.column("input_tokens")).as_py() or 0,
            pc.sum(paid.column("output_tokens")).as_py() or 0,
            paid.num_rows,
        )
        return responses, ""

    def train(self, t: int, out_dir: Path, metrics: dict) -> None:
        """Fresh LoRA on all synthetic data so far; the student then serves the new adapter."""
        if self.synthetic.num_rows == 0:
            log.warning("iteration %d: no synthetic data yet, keeping the current adapter", t)
            return
        train_set = to_train_examples(self.task, self.synthetic)
        if self.config.trainer.include_seeds:
            train_set = pa.concat_tables([to_train_examples(self.task, self.splits.seeds), train_set])
        result = self.actors.trainer.train(ray.put(train_set), self.val_train_ref, str(out_dir / "adapter"))
        self.adapter_dir = result.pop("adapter_dir")
        self.trainer_seconds += float(result.get("trainer/accelerator_seconds", 0.0))
        ray.get(self.actors.student.set_adapter.remote(self.adapter_dir))
        metrics.update({k: float(v) for k, v in result.items() if isinstance(v, (int, float))})

    def evaluate(self, prefix: str) -> dict[str, float]:
        """Accuracy, ECE and mean confidence of the current student on validation and test."""
        val, test = ray.get([self.actors.student.predict.remote(self.val_ref), self.actors.student.predict.remote(self.test_ref)])
        out = {}
        for split, table in (("val", val), ("test", test)):
            correct = table.column("correct").to_numpy(zero_copy_only=False)
            confidence = table.column("confidence").to_numpy()
            out[f"{prefix}/{split}_accuracy"] = float(correct.mean())
            out[f"{prefix}/{split}_ece"] = expected_calibration_error(confidence, correct)
            out[f"{prefix}/{split}_mean_confidence"] = float(confidence.mean())
        return out

    # --- bookkeeping ------------------------------------------------------------------------
    def finish_iteration(self, t: int, out_dir: Path, tables: dict[str, pa.Table], metrics: dict) -> None:
        """Persist the iteration (Parquet, state.json), then log it to MLflow."""
        self.charge_seconds()
        metrics.update(self.ledger.metrics())
        for name, table in tables.items():
            pq.write_table(table, out_dir / f"{name}.parquet")
        self.history.append(metrics)
        self.write_state(t)
        self.tracker.log_metrics(metrics, step=t)
        self.tracker.log_artifacts(out_dir, f"iter_{t:02d}")
        log.info("iteration %d: %s", t, {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "budget/teacher_tokens"))})

    def charge_seconds(self) -> None:
        """Charge the busy seconds each actor role accumulated since the last call."""
        totals = {
            "teacher": self.actors.teacher.busy_seconds(),
            "student": ray.get(self.actors.student.busy_seconds.remote()),
            "trainer": self.trainer_seconds,
        }
        for role, total in totals.items():
            self.ledger.charge_seconds(role, total - self.ledger.spent.accelerator_seconds.get(role, 0.0))

    def write_state(self, t: int) -> None:
        """Atomically write what is finished: iterations, ledger, adapter, history."""
        state = {
            "iterations_completed": t + 1,
            "adapter_dir": self.adapter_dir,
            "ledger": self.ledger.state(),
            "history": self.history,
            "mlflow_run_id": self.tracker.run_id,
        }
        tmp = self.run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / "state.json")
        pq.write_table(self.synthetic, self.run_dir / "synthetic_all.parquet")


def to_train_examples(task: Task, table: pa.Table) -> pa.Table:
    """TRAIN_EXAMPLES from SEEDS-like rows: the task's answer prompt -> the worked answer."""
    rows = project(table, SEEDS).to_pylist()
    return make_table(
        TRAIN_EXAMPLES,
        [{"id": r["id"], "prompt": task.answer_prompt(r["question"]), "completion": r["answer"]} for r in rows],
    )


def make_run_dir(config: RunConfig) -> Path:
    """<output_dir>/<run_name or task-strategy>-<UTC timestamp>."""
    name = config.tracking.run_name or f"{config.task.name}-{config.loop.strategy}"
    run_dir = Path(config.tracking.output_dir).resolve() / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def run(config: RunConfig) -> RunSummary:
    """Load data, start Ray and the actors, run the loop, log everything; see the module docstring.

    Raises:
        tasks.DataError: a data file is missing or malformed (before anything starts).
        loopdistill.models.ModelLoadError: a model does not load (the MLflow run is marked FAILED).
    """
    from drivers.ray_setup import init_ray

    task = get_task(config.task.name)
    tc = config.task
    splits = task.load_splits(tc.data_path, tc.num_seeds, tc.num_validation, tc.num_test, tc.seed)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    init_ray(config)
    with Tracker(config, run_dir, config.tracking.run_name) as tracker:
        actors = start_actors(config, run_dir)
        try:
            loop = ClosedLoop(config, task, splits, actors, tracker, run_dir)
            done, reason = loop.run()
            tracker.set_tags({"stop_reason": reason, "iterations_completed": str(done)})
        finally:
            actors.shutdown()
    summary = RunSummary(str(run_dir), tracker.run_id, done, reason, loop.history)
    (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary
