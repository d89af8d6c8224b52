"""The iteration driver: Algorithm 1 of Kessler et al. 2025 (arXiv 2512.00884), top to bottom.

    for t in 0..T-1:
        predict  -> the student answers the seed pool D0 (greedy, with logprobs)
        score    -> a strategy scores every seed from the student's answers
        select   -> the m highest-scoring seeds
        generate -> the teacher pool rewrites them into new questions and answers them; near-duplicates
                    (ROUGE-L > 0.7) and unparseable outputs are dropped
        train    -> a fresh LoRA on everything generated so far, best checkpoint on validation
        evaluate -> validation/test accuracy and ECE of the new adapter

After every stage the driver writes the stage's Parquet tables under `iter_NN/` and `state.json`
(drivers/checkpoint.py); after each iteration it logs metrics (step = iteration) and artifacts to MLflow.
An error in iteration t leaves everything finished intact, and `resume(run_dir)` continues after the last
completed stage in the same MLflow run. Teacher answers are also cached as they arrive (paid once).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from actors.sft_data import to_train_examples
from drivers import fidelity, selection, synthesis
from drivers.budget import BudgetLedger
from drivers.calibration import expected_calibration_error
from drivers.actor_group import Actors, start_actors
from drivers.checkpoint import RunState
from drivers.gather import SignalGatherer
from drivers.tracking import Tracker
from loopdistill.config import RunConfig, build_config
from loopdistill.models import check_model, load_tokenizer
from loopdistill.schemas import SYNTHETIC, TEACHER_RESPONSES, make_table
from tasks import DataError, Splits, Task, get_task

log = logging.getLogger("loopdistill")

# The Parquet tables each stage leaves in iter_NN/ (read back instead of recomputed on resume).
STAGE_TABLES = {"predict": ("predictions",), "select": ("scores", "selected"), "generate": ("synthetic",), "train": (), "evaluate": ()}


@dataclass
class RunSummary:
    """What a finished (or budget-stopped) run produced."""

    run_dir: str
    mlflow_run_id: str
    iterations_completed: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)


class ClosedLoop:
    """One run of the loop over already started actors; `run()` iterates until done or out of budget.
    `state` is a fresh RunState, or the one a crashed run left (then finished stages are skipped)."""

    def __init__(self, config: RunConfig, task: Task, splits: Splits, actors: Actors, tracker: Tracker, run_dir: Path, state: RunState):
        self.config, self.task, self.splits, self.actors = config, task, splits, actors
        self.tracker, self.run_dir, self.state = tracker, run_dir, state
        self.ledger = BudgetLedger(config.budget)
        self.ledger.restore(state.ledger)
        # What the paid-once cache holds is exactly what was paid, even if the driver died mid-stage.
        self.ledger.reconcile_teacher(self.actors.teacher.paid())
        self.seen_seconds = {"teacher": 0.0, "student": 0.0, "reward": 0.0}  # busy counters of these actors
        self.gatherer = SignalGatherer(config, task, actors, self.ask_teacher)
        self._tokenizer = None  # the student's, for the token-distribution fidelity metric
        self.synthetic = self.load_synthetic()
        self.seed_rows = splits.seeds.to_pylist()
        self.seeds_ref = ray.put(splits.seeds)
        self.val_ref = ray.put(splits.validation)
        self.test_ref = ray.put(splits.test)
        self.val_train_ref = ray.put(to_train_examples(task, splits.validation))

    # --- the loop -----------------------------------------------------------------------------
    def run(self) -> tuple[int, str]:
        """Returns (iterations completed, stop reason)."""
        if not self.state.baseline_done:
            self.tracker.log_metrics(self.evaluate(prefix="baseline"), step=0)
            self.state.baseline_done = True
            self.save_state()
        for t in range(self.state.iteration, self.config.loop.iterations):
            reason = self.ledger.exhausted() if not self.state.stages_done else None
            reason = reason or self.iteration(t)
            if reason:
                return t, reason
        return self.config.loop.iterations, "completed"

    def iteration(self, t: int) -> str:
        """Run the stages of iteration t not yet done. Returns a stop reason, or "" when completed."""
        out_dir = self.iter_dir(t)
        out_dir.mkdir(parents=True, exist_ok=True)
        metrics = dict(self.state.partial_metrics) or {"iteration": t}
        predictions = self.stage(t, "predict", metrics, lambda: {"predictions": self.predict_pool()})["predictions"]
        stop: list[str] = []
        selected = self.stage(t, "select", metrics, lambda: self.select(predictions, t, metrics, stop)).get("selected")
        if stop:
            return stop[0]
        self.stage(t, "generate", metrics, lambda: self.generate(selected, predictions, t, metrics, stop))
        if stop:
            return stop[0]
        metrics["synth/total"] = self.synthetic.num_rows
        self.stage(t, "train", metrics, lambda: self.train(t, out_dir, metrics))
        self.stage(t, "evaluate", metrics, lambda: self.evaluate_stage(metrics))
        self.finish_iteration(t, out_dir, metrics)
        return ""

    def stage(self, t: int, name: str, metrics: dict, compute: Callable[[], dict]) -> dict[str, pa.Table]:
        """Run one stage, or read its tables back when a previous run of this directory finished it.
        A stage that computes None produced nothing and is not marked done (a budget stop)."""
        out_dir = self.iter_dir(t)
        if name in self.state.stages_done:
            log.info("iteration %d: stage %s already done, reading its output", t, name)
            return {key: pq.read_table(out_dir / f"{key}.parquet") for key in STAGE_TABLES[name]}
        log.info("iteration %d: stage %s", t, name)
        start = time.perf_counter()
        tables = compute()
        if tables is None:
            return {}
        metrics[f"time/{name}_s"] = time.perf_counter() - start
        assert set(tables) == set(STAGE_TABLES[name]), (name, list(tables))
        for key, table in tables.items():
            pq.write_table(table, out_dir / f"{key}.parquet")
        self.state.complete_stage(name, metrics)
        self.save_state()
        return tables

    # --- stages ------------------------------------------------------------------------------
    def predict_pool(self) -> pa.Table:
        """PREDICTIONS of the current student on the seed pool."""
        return self.predict_with_current_adapter(self.seeds_ref)

    def predict_with_current_adapter(self, examples) -> pa.Table:
        """PREDICTIONS of the current student on SEEDS rows (a table or its object ref)."""
        return ray.get(self.actors.student.predict.remote(examples, self.state.adapter_dir))

    def tokenizer(self):
        """The student's tokenizer (loaded on first use, in the driver), for the fidelity metrics."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.config.student.model.path)
        return self._tokenizer

    def select(self, predictions: pa.Table, t: int, metrics: dict, stop: list[str]) -> dict[str, pa.Table] | None:
        """Gather the strategy's signals, score the pool and choose m seeds; returns {"scores": SCORES,
        "selected": the selected SEEDS rows}, or None (the reason appended to `stop`) when the budget
        cannot pay for the judge."""
        loop = self.config.loop
        signals, gathered, reason = self.gatherer.gather(self.splits.seeds, predictions, self.state.adapter_dir, t)
        if reason:
            stop.append(reason)
            return None
        scores, idx = selection.choose(loop.strategy, signals, loop.seeds_per_iteration, loop.sampling, loop.softmax_temperature, loop.seed + t)
        losses = predictions.column("loss").to_numpy()
        metrics.update(gathered)
        metrics.update(fidelity.selection_summary(scores.column("score").to_numpy(), idx))
        metrics.update(
            {
                "predict/pool_accuracy": float(np.mean(predictions.column("correct").to_numpy(zero_copy_only=False))),
                "select/pool_mean_loss": float(losses.mean()),
                "select/selected_mean_loss": float(losses[idx].mean()),
                "select/selected": len(idx),
            }
        )
        return {"scores": scores, "selected": self.splits.seeds.take(pa.array(idx, pa.int64()))}

    def generate(self, selected: pa.Table, predictions: pa.Table, t: int, metrics: dict, stop: list[str]) -> dict[str, pa.Table] | None:
        """Rewrite, dedup, answer r times (rejection sampling); returns {"synthetic": SYNTHETIC rows of
        this iteration} and adds them to the cumulative set. Returns None (appending the reason to
        `stop`) when the budget cannot pay for a single request."""
        loop, task = self.config.loop, self.task
        chosen = selected.to_pylist()
        requests = synthesis.rewrite_requests(task, chosen, self.seed_rows, loop.few_shot_k, t, loop.seed)
        rewrites, reason = self.ask_teacher(requests, seed=loop.seed + 2 * t)
        if reason:
            stop.append(reason)
            return None
        candidates, bad_rewrites = synthesis.parse_rewrites(task, chosen, rewrites)
        earlier = self.synthetic.column("question").to_pylist()
        kept, dropped = synthesis.Deduplicator(task, loop.dedup_rouge_l).filter(candidates, earlier)
        left = self.ledger.samples_left()
        kept = kept if left is None else kept[:left]
        answers, reason = self.answer_candidates(kept, t)
        if reason:
            stop.append(reason)
            return None
        answered = answers[0].num_rows if answers else 0  # the budget may cut the first round short
        new, bad_answers = synthesis.build_synthetic(task, kept[:answered], answers, t, loop.strategy)
        left = self.ledger.samples_left()
        new = new if left is None else new.slice(0, left)
        self.ledger.charge_samples(new.num_rows, answers=sum(a.num_rows for a in answers))
        metrics.update(
            {
                "synth/unparseable_rewrites": bad_rewrites,
                "synth/deduplicated": dropped,
                "synth/rejected_answers": bad_answers,
                "synth/responses_per_question": len(answers),
                "synth/answers_generated": sum(a.num_rows for a in answers),
                "synth/kept": new.num_rows,
            }
        )
        if self.config.loop.fidelity_metrics:
            metrics.update(fidelity.synthesis_fidelity(self.tokenizer(), self.predict_with_current_adapter, new, predictions, self.splits.seeds))
        self.synthetic = pa.concat_tables([self.synthetic, new])
        return {"synthetic": new}

    def answer_candidates(self, kept: list, t: int) -> tuple[list[pa.Table], str]:
        """r = loop.responses_per_question answer tables for the kept candidates (each sampled with its
        own seed); stops early, keeping what was paid, when the budget runs out after the first."""
        loop, tables = self.config.loop, []
        for j in range(loop.responses_per_question):
            requests = synthesis.answer_requests(self.task, kept, t, response=j)
            answers, reason = self.ask_teacher(requests, seed=loop.seed + 2 * t + 1 + 7 * j)
            if reason and not tables:
                return [], reason
            if reason or answers.num_rows == 0:
                break
            tables.append(answers)
        return tables, ""

    def ask_teacher(self, requests: pa.Table, seed: int, max_new_tokens: int | None = None,
                    temperature: float | None = None) -> tuple[pa.Table, str]:
        """Send the requests the budget can pay for (reserved at prompt + max_new_tokens), settle at
        the real counts. Returns (responses, stop reason when not even one request is affordable).
        max_new_tokens / temperature override the teacher config's (the judge's short greedy replies)."""
        if requests.num_rows == 0:
            return make_table(TEACHER_RESPONSES, []), ""
        prompt_tokens = self.actors.teacher.count_tokens(requests.column("prompt").to_pylist())
        n = self.ledger.affordable_requests(prompt_tokens, max_new_tokens or self.config.teacher.max_new_tokens)
        if n == 0:
            return make_table(TEACHER_RESPONSES, []), "budget exhausted: the teacher budget cannot pay for one more request"
        responses = self.actors.teacher.generate(requests.slice(0, n), seed, max_new_tokens, temperature)
        # Settle from the paid-once cache rather than from `responses`: a replica that died after
        # persisting part of the batch was paid for that part, which its retried call serves as cached.
        self.ledger.reconcile_teacher(self.actors.teacher.paid())
        return responses, ""

    def train(self, t: int, out_dir: Path, metrics: dict) -> dict:
        """Fresh LoRA on all synthetic data so far; the student then serves the new adapter."""
        if self.synthetic.num_rows == 0:
            log.warning("iteration %d: no synthetic data yet, keeping the current adapter", t)
            return {}
        train_set = to_train_examples(self.task, self.synthetic)
        if self.config.trainer.include_seeds:
            train_set = pa.concat_tables([to_train_examples(self.task, self.splits.seeds), train_set])
        result = self.actors.trainer.train(ray.put(train_set), self.val_train_ref, str(out_dir / "adapter"))
        self.state.adapter_dir = result.pop("adapter_dir")
        self.ledger.charge_seconds("trainer", float(result.get("trainer/accelerator_seconds", 0.0)))
        metrics.update({k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
        return {}

    def evaluate_stage(self, metrics: dict) -> dict:
        """Stage 6: evaluation metrics of the new adapter go into this iteration's metrics."""
        metrics.update(self.evaluate(prefix="eval"))
        return {}

    def evaluate(self, prefix: str) -> dict[str, float]:
        """Accuracy, ECE and mean confidence of the current student on validation and test."""
        student, adapter = self.actors.student, self.state.adapter_dir
        val, test = ray.get([student.predict.remote(self.val_ref, adapter), student.predict.remote(self.test_ref, adapter)])
        out = {}
        for split, table in (("val", val), ("test", test)):
            correct = table.column("correct").to_numpy(zero_copy_only=False)
            confidence = table.column("confidence").to_numpy()
            out[f"{prefix}/{split}_accuracy"] = float(correct.mean())
            out[f"{prefix}/{split}_ece"] = expected_calibration_error(confidence, correct)
            out[f"{prefix}/{split}_mean_confidence"] = float(confidence.mean())
        return out

    # --- bookkeeping ------------------------------------------------------------------------
    def finish_iteration(self, t: int, out_dir: Path, metrics: dict) -> None:
        """Close the iteration: charge seconds, log metrics and artifacts to MLflow, write state."""
        self.charge_seconds()
        metrics.update(self.ledger.metrics())
        self.tracker.log_metrics(metrics, step=t)
        self.tracker.log_artifacts(out_dir, f"iter_{t:02d}")
        self.state.complete_iteration(metrics)
        self.save_state()
        log.info("iteration %d: %s", t, {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "budget/teacher_tokens"))})

    def charge_seconds(self) -> None:
        """Charge the busy seconds the teacher and student accumulated since the last call (the
        trainer is charged per train call)."""
        totals = {
            "teacher": self.actors.teacher.busy_seconds(),
            "student": ray.get(self.actors.student.busy_seconds.remote()),
        }
        if self.actors.reward is not None:
            totals["reward"] = ray.get(self.actors.reward.busy_seconds.remote())
        for role, total in totals.items():
            self.ledger.charge_seconds(role, total - self.seen_seconds[role])
            self.seen_seconds[role] = total

    def save_state(self) -> None:
        self.state.ledger = self.ledger.state()
        self.state.save(self.run_dir)

    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter_{t:02d}"

    def load_synthetic(self) -> pa.Table:
        """The cumulative synthetic set S from the iterations whose generate stage finished."""
        tables = [pq.read_table(p) for p in sorted(self.run_dir.glob("iter_*/synthetic.parquet"))]
        return pa.concat_tables([make_table(SYNTHETIC, []), *tables])


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
        loopdistill.models.ModelLoadError: a model path does not load (before anything starts).
    """
    splits = load_splits(config)
    check_model(config.student.model.path)
    check_model(config.teacher.model.path)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(config.model_dump_json(indent=2))
    return _drive(config, splits, run_dir, state=None)


def resume(run_dir: str | Path) -> RunSummary:
    """Continue the run in `run_dir` after its last completed stage, in the same MLflow run.

    Raises:
        drivers.checkpoint.ResumeError: no readable state.json / config.json in `run_dir`.
    """
    from drivers.checkpoint import ResumeError

    run_dir = Path(run_dir).resolve()
    state = RunState.load(run_dir)
    try:
        config = build_config(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    except OSError as err:
        raise ResumeError(f"cannot resume {run_dir}: {err}") from None
    return _drive(config, load_splits(config), run_dir, state)


def load_splits(config: RunConfig) -> Splits:
    """The task's splits, checked: a non-empty seed pool and ids unique across all splits.

    Raises:
        tasks.DataError: naming the data path and the empty split or the duplicated ids.
    """
    tc = config.task
    options = {"levels": tc.levels} if tc.levels is not None else {}  # MATH difficulty levels only
    splits = get_task(tc.name).load_splits(tc.data_path, tc.num_seeds, tc.num_validation, tc.num_test, tc.seed, **options)
    if splits.seeds.num_rows == 0:
        raise DataError(f"{tc.data_path}: the seed pool is empty")
    ids = [i for table in (splits.seeds, splits.validation, splits.test) for i in table.column("id").to_pylist()]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise DataError(f"{tc.data_path}: duplicate ids across seeds/validation/test: {duplicates[:10]}")
    return splits


def _drive(config: RunConfig, splits: Splits, run_dir: Path, state: RunState | None) -> RunSummary:
    from drivers.ray_setup import init_ray

    init_ray(config)
    run_id = state.mlflow_run_id if state else None
    with Tracker(config, run_dir, config.tracking.run_name, run_id=run_id) as tracker:
        state = state or RunState(mlflow_run_id=tracker.run_id)
        state.save(run_dir)
        actors = start_actors(config, run_dir)
        try:
            loop = ClosedLoop(config, get_task(config.task.name), splits, actors, tracker, run_dir, state)
            done, reason = loop.run()
            state.stop_reason = reason
            loop.save_state()
            tracker.set_tags({"stop_reason": reason, "iterations_completed": str(done)})
        finally:
            actors.shutdown()
    summary = RunSummary(str(run_dir), tracker.run_id, done, reason, state.history)
    (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
    return summary
