"""The iteration driver: Algorithm 1 of Kessler et al. 2025 (arXiv 2512.00884), top to bottom.

    for t in 0..T-1:
        predict  -> the student answers the seed pool D0 (greedy, with logprobs)
        score    -> a strategy scores every seed from the student's answers
        select   -> the m highest-scoring seeds
        generate -> the teacher pool rewrites them into new questions and answers them; validation/test
                    questions (equal key or ROUGE-L > 0.7), near-duplicates (ROUGE-L > 0.7) and
                    unparseable outputs are dropped
        train    -> a fresh LoRA on everything generated so far (minus rolled-back iterations' rows),
                    mixed with real seed rows at trainer.synthetic_fraction, best checkpoint on validation
        evaluate -> validation/test accuracy and ECE of the new adapter
        gate     -> the calibration gate accepts the adapter, or halts, rolls back or retrains at a
                    lower synthetic fraction (drivers/gating.py); then the scaling-law forecast

After every stage the driver writes the stage's Parquet tables under `iter_NN/` and `state.json`
(drivers/checkpoint.py); after each iteration it logs metrics (step = iteration + 1; the untrained
baseline is step 0) and artifacts to MLflow.
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

from loopdistill.seeds import teacher_seed
from actors.sft_data import to_train_examples
from drivers import decontamination, fidelity, selection, synthesis
from drivers.budget import BudgetLedger
from drivers import gating, mixing, plots, scaling
from drivers.calibration import expected_calibration_error, reliability_curve
from drivers.actor_group import Actors, preflight_teacher, start_actors
from drivers.checkpoint import ResumeError, RunInterrupted, RunState
from drivers.progress import RunProgress, attach_run_log, detach_run_log, final_table, predict_chunked
from drivers.gather import SignalGatherer
from drivers.tracking import Tracker
from loopdistill.config import ConfigError, RunConfig, apply_overrides, build_config, dump_config
from loopdistill.models import load_tokenizer
from loopdistill.schemas import SYNTHETIC, TEACHER_RESPONSES, make_table
from loopdistill.secrets import REDACTED
from loopdistill.tasks import DataError, Splits, Task, get_task

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
        self.progress: RunProgress | None = None  # set by _drive: the terminal display
        self.ledger = BudgetLedger(config.budget)
        self.ledger.restore(state.ledger)
        # The spend journal holds every request sent (settled, or open and charged in full), even if the
        # driver died mid-stage: the ledger takes its teacher figures from there.
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
        if self.state.halt_reason:  # the gate or the forecast stopped this run: a resume runs nothing
            return self.state.iteration, self.state.halt_reason
        if not self.state.baseline_done:
            # Step 0 of the same curves as the iterations (iteration t is step t + 1).
            with self.stage_progress("baseline: evaluate", self.eval_rows()) as bar:
                baseline = self.evaluate(prefix="eval", bar=bar)
            self.state.baseline = baseline
            self.tracker.log_metrics(baseline, step=0)
            self.state.baseline_done = True
            self.save_state()
        for t in range(self.state.iteration, self.config.loop.iterations):
            reason = self.ledger.exhausted() if not self.state.stages_done else None
            reason = reason or self.iteration(t)
            if reason:  # a budget stop inside t, or a gate/forecast stop after t finished
                return self.state.iteration, reason
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
        self.stage(t, "evaluate", metrics, lambda: self.evaluate_stage(metrics, out_dir))
        reason = self.gate(t, out_dir, metrics)  # a halt, or ""
        forecast_stop = self.finish_iteration(t, out_dir, metrics)
        return reason or forecast_stop

    def stage(self, t: int, name: str, metrics: dict, compute: Callable[[], dict]) -> dict[str, pa.Table]:
        """Run one stage, or read its tables back when a previous run of this directory finished it.
        A stage that computes None produced nothing and is not marked done (a budget stop)."""
        out_dir = self.iter_dir(t)
        if name in self.state.stages_done:
            log.info("iteration %d: stage %s already done, reading its output", t, name)
            return {key: pq.read_table(out_dir / f"{key}.parquet") for key in STAGE_TABLES[name]}
        log.info("iteration %d: stage %s", t, name)
        start = time.perf_counter()
        rows = {"predict": self.splits.seeds.num_rows, "evaluate": self.eval_rows()}.get(name)
        with self.stage_progress(f"iteration {t}: {name}", rows) as bar:
            self._bar = bar
            tables = compute()
        self._bar = None
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
        if examples is self.seeds_ref and getattr(self, "_bar", None) is not None:
            # In chunks, so the progress line moves as the student answers.
            return predict_chunked(self.actors.student.predict, self.splits.seeds, self.predict_chunk_rows(), self._bar, self.state.adapter_dir)
        return ray.get(self.actors.student.predict.remote(examples, self.state.adapter_dir))

    def predict_chunk_rows(self) -> int:
        """Rows per student call when a progress line follows the answers. The transformers engine
        batches by student.batch_size anyway, so chunks of that size cost nothing; the vLLM engine
        schedules one call as one continuously batched engine run, and chunks of 256 made the 1,100-seed
        predict stage of the 4x H100 study wait on each chunk's longest answer: it gets one call."""
        return self.config.student.batch_size if self.config.student.engine == "transformers" else 2**31 - 1

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
        rewrites, reason = self.ask_teacher(requests, seed=teacher_seed(loop.seed, t, "rewrite"))
        if reason:
            stop.append(reason)
            return None
        candidates, bad_rewrites = synthesis.parse_rewrites(task, chosen, rewrites)
        # Before any answer is paid for: every path to S (one answer or r for rejection sampling)
        # starts from these candidates, so no validation/test question can reach training data.
        evaluation = decontamination.evaluation_questions(self.splits.validation, self.splits.test)
        index = decontamination.EvaluationIndex(task, evaluation, loop.decontamination_threshold)
        candidates, contaminated = decontamination.decontaminate(candidates, index)
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
                "synth/decontaminated": len(contaminated),
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
            # One call seed for every round: request j's own seed comes from its request_id.
            answers, reason = self.ask_teacher(requests, seed=teacher_seed(loop.seed, t, "answer"))
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
        seed: the call's seed, teacher_seed(run seed, iteration, purpose); each request samples with
        teacher_seed(seed, request_id), whatever the sharding or batch size.
        max_new_tokens / temperature override the teacher config's (the judge's short greedy replies)."""
        if requests.num_rows == 0:
            return make_table(TEACHER_RESPONSES, []), ""
        prompt_tokens = self.actors.teacher.count_tokens(requests.column("prompt").to_pylist())
        n = self.ledger.affordable_requests(prompt_tokens, max_new_tokens or self.config.teacher.max_new_tokens)
        if n == 0:
            return make_table(TEACHER_RESPONSES, []), "budget exhausted: the teacher budget cannot pay for one more request"
        responses = self.actors.teacher.generate(requests.slice(0, n), seed, max_new_tokens, temperature)
        # Settle from the spend journal rather than from `responses`: it holds every request sent,
        # including those of a replica that died mid-call (charged in full) and answers its retried call
        # serves as cached.
        self.ledger.reconcile_teacher(self.actors.teacher.paid())
        return responses, ""

    def train(self, t: int, out_dir: Path, metrics: dict, attempt: int = 0) -> dict:
        """Fresh LoRA on the synthetic data so far (minus rolled-back iterations' rows) mixed with real
        seed rows (trainer.synthetic_fraction, or all seeds with trainer.include_seeds); the student
        then serves the new adapter. attempt k > 0: the gate's k-th retrain of iteration t.

        Raises:
            loopdistill.config.ConfigError: the seed pool is too small for the synthetic fraction.
        """
        synthetic = mixing.excluded_rows_removed(self.synthetic, self.state.excluded_iterations)
        if synthetic.num_rows == 0:
            log.warning("iteration %d: no synthetic data to train on, keeping the current adapter", t)
            return {}
        train_set = to_train_examples(self.task, synthetic)
        fraction = self.synthetic_fraction()
        if self.config.trainer.include_seeds:
            train_set = pa.concat_tables([to_train_examples(self.task, self.splits.seeds), train_set])
        elif fraction < 1:
            if self.state.synthetic_fraction is not None:
                # The gate's cut was feasible for the rows of the iteration it judged; later iterations
                # add rows, and the same fraction may then need more seeds than the pool has. Use the
                # whole pool instead of failing mid-run (trainer.* cannot change on resume). The
                # configured fraction is checked at load and still fails naming its field.
                lowest = mixing.lowest_fraction(synthetic.num_rows, self.splits.seeds.num_rows)
                if lowest > fraction:
                    log.warning("iteration %d: the seed pool supplies a synthetic fraction of %.3g at least, not the "
                                "gate's %.3g: training on all %d seeds", t, lowest, fraction, self.splits.seeds.num_rows)
                    fraction = lowest
            real = mixing.sample_seeds(self.splits.seeds, synthetic.num_rows, fraction, self.config.loop.seed)
            train_set = pa.concat_tables([to_train_examples(self.task, real), train_set])
        metrics.update({"trainer/synthetic_rows": synthetic.num_rows, "trainer/real_rows": train_set.num_rows - synthetic.num_rows,
                        "trainer/synthetic_fraction": synthetic.num_rows / train_set.num_rows})
        suffix = f"_retrain{attempt}" if attempt else ""
        result = self.actors.trainer.train(ray.put(train_set), self.val_train_ref, str(out_dir / f"adapter{suffix}"))
        self.state.adapter_dir = result.pop("adapter_dir")
        # One point per optimizer step; each iteration trains a fresh LoRA, so each gets its own curve.
        self.tracker.log_series(f"trainer/step_loss_iter_{t:02d}{suffix}", result.pop("trainer/step_losses", []) or [], first_step=1)
        self.ledger.charge_seconds("trainer", float(result.get("trainer/accelerator_seconds", 0.0)))
        metrics.update({k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
        return {}

    def evaluate_stage(self, metrics: dict, out_dir: Path) -> dict:
        """Stage 6: evaluation metrics of the new adapter go into this iteration's metrics; its
        validation PREDICTIONS go to out_dir/val_predictions.parquet (the reliability diagram's input)."""
        val, test = self.evaluate_tables(bar=getattr(self, "_bar", None))
        pq.write_table(val, out_dir / "val_predictions.parquet")
        metrics.update(self.evaluation_metrics("eval", val, test))
        return {}

    def evaluate(self, prefix: str, bar=None) -> dict[str, float]:
        """Accuracy, ECE and mean confidence of the current student on validation and test (`bar`:
        a progress line advanced per answered chunk)."""
        return self.evaluation_metrics(prefix, *self.evaluate_tables(bar))

    def evaluate_tables(self, bar=None) -> tuple[pa.Table, pa.Table]:
        """PREDICTIONS of the current student on (validation, test)."""
        student, adapter = self.actors.student, self.state.adapter_dir
        if bar is None:
            val, test = ray.get([student.predict.remote(self.val_ref, adapter), student.predict.remote(self.test_ref, adapter)])
        else:
            size = self.predict_chunk_rows()
            val = predict_chunked(student.predict, self.splits.validation, size, bar, adapter)
            test = predict_chunked(student.predict, self.splits.test, size, bar, adapter)
        return val, test

    def evaluation_metrics(self, prefix: str, val: pa.Table, test: pa.Table) -> dict[str, float]:
        """Accuracy, ECE (equal-count bins, gate.ece_bins / gate.ece_min_per_bin; confidence = the
        final-answer tokens' probability, drivers/calibration.py) and mean confidence per split."""
        gate, out = self.config.gate, {}
        for split, table in (("val", val), ("test", test)):
            correct = table.column("correct").to_numpy(zero_copy_only=False)
            confidence = table.column("confidence").to_numpy()
            out[f"{prefix}/{split}_accuracy"] = float(correct.mean())
            out[f"{prefix}/{split}_ece"] = expected_calibration_error(confidence, correct, gate.ece_bins, gate.ece_min_per_bin)
            out[f"{prefix}/{split}_mean_confidence"] = float(confidence.mean())
        return out

    # --- the calibration gate and the forecast --------------------------------------------------
    def synthetic_fraction(self) -> float:
        """The training set's synthetic fraction now: the gate's last reduction, else the config's."""
        return self.state.synthetic_fraction if self.state.synthetic_fraction is not None else self.config.trainer.synthetic_fraction

    def gate(self, t: int, out_dir: Path, metrics: dict) -> str:
        """The calibration gate (drivers/gating.py) on iteration t's validation metrics, against the
        last accepted iteration (the baseline before any). Under reduce_synthetic_ratio it retrains and
        judges again. Each decision is saved in the run state when taken and each retrain as a stage
        ("retrain1", ...), so a resumed run neither decides nor trains anything twice. Returns the halt
        reason, or ""."""
        state = self.state
        while True:
            taken = [d for d in state.gate_decisions if d["iteration"] == t]
            if taken and taken[-1]["action"] != gating.REDUCE:
                break
            if taken and f"retrain{len(taken)}" not in state.stages_done:
                self.train(t, out_dir, metrics, attempt=len(taken))
                self.evaluate_stage(metrics, out_dir)
                state.complete_stage(f"retrain{len(taken)}", metrics)
                self.save_state()
                continue
            reference = state.accepted_metrics or state.baseline
            usable = mixing.excluded_rows_removed(self.synthetic, state.excluded_iterations).num_rows
            decision = gating.decide(
                self.config.gate, t, len(taken), metrics["eval/val_ece"], metrics["eval/val_accuracy"],
                reference.get("eval/val_ece", 0.0), reference.get("eval/val_accuracy", 0.0), state.accepted_iteration,
                self.synthetic_fraction(), mixing.lowest_fraction(usable, self.splits.seeds.num_rows),
            )
            log.info("iteration %d: %s", t, decision.reason)
            state.gate_decisions.append(decision.as_dict())
            if decision.action == gating.REDUCE:
                state.synthetic_fraction = decision.synthetic_fraction
            self.save_state()
        return self.apply_gate(t, taken[-1], metrics)

    def apply_gate(self, t: int, decision: dict, metrics: dict) -> str:
        """Act on iteration t's final gate decision (idempotent: a resume may apply it again) and put
        it in the iteration's metrics. Returns the halt reason, or ""."""
        state, action = self.state, decision["action"]
        if action == gating.ACCEPT:
            state.accepted_iteration, state.accepted_adapter = t, state.adapter_dir
            state.accepted_metrics = {k: metrics[k] for k in ("eval/val_ece", "eval/val_accuracy")}
        else:  # halt and rollback: the student goes back to the last accepted adapter
            state.adapter_dir = state.accepted_adapter
            if action == gating.ROLLBACK and t not in state.excluded_iterations:
                state.excluded_iterations.append(t)
            if action == gating.HALT:
                state.halt_reason = decision["reason"]
        metrics.update({
            "gate/decision": gating.DECISION_CODES[action], "gate/fired": float(decision["fired"]),
            "gate/ece_rise": decision["ece_rise"], "gate/accuracy_gain": decision["accuracy_gain"],
            "gate/retrains": decision["attempt"], "gate/synthetic_fraction": self.synthetic_fraction(),
            "gate/accepted_iteration": state.accepted_iteration,
        })
        return state.halt_reason if action == gating.HALT else ""

    def forecast(self, t: int, metrics: dict) -> tuple[str, tuple | None]:
        """Fit the rectified law to (D, validation error) of the baseline (D = 0) and every finished
        iteration (drivers/scaling.py), forecast the error at what the remaining budget buys (or at
        D * forecast.horizon_multiple without a limit) with a bootstrap interval; figures go into
        `metrics` and iter_NN/forecast.json. Returns (a stop reason when forecast.stop_when_gain_below
        applies, else ""; the plot's inputs or None when there was no fit)."""
        fc = self.config.forecast
        key = {"samples": "budget/teacher_samples", "tokens": "budget/teacher_tokens"}[fc.axis]
        rows = ([self.state.baseline | {key: 0.0}] if self.state.baseline else []) + self.state.history + [metrics]
        rows = [r for r in rows if "eval/val_accuracy" in r and key in r]
        d = np.array([r[key] for r in rows], dtype=float)
        err = np.array([1.0 - r["eval/val_accuracy"] for r in rows])
        if not fc.enabled or len(d) < fc.min_points or np.unique(d).size < 2 or d[-1] <= 0:
            return "", None
        try:
            fit = scaling.fit_rectified_law(d, err)
        except ValueError as error:
            log.warning("iteration %d: no forecast: %s", t, error)
            return "", None
        left = scaling.remaining_on_axis(fc.axis, metrics, self.config.budget, d[-1])
        target = d[-1] + left if left is not None else d[-1] * fc.horizon_multiple
        low, high = scaling.bootstrap_forecast(d, err, fit, target, fc.bootstrap, fc.interval, seed=self.config.loop.seed + t)
        at_target, now = float(fit.predict(target)), float(fit.predict(d[-1]))
        gain = now - at_target
        metrics.update({
            "forecast/B": fit.B, "forecast/D_l": fit.D_l, "forecast/beta": fit.beta, "forecast/E": fit.E,
            "forecast/rmse": fit.rmse, "forecast/points": len(d), "forecast/target_D": target,
            "forecast/val_error_at_target": at_target, "forecast/val_error_low": low, "forecast/val_error_high": high,
            "forecast/predicted_gain": gain,
        })
        record = {"axis": fc.axis, "D": d.tolist(), "val_error": err.tolist(), "fit": fit.as_dict(), "target_D": target,
                  "budget_limited": left is not None, "val_error_at_target": at_target, "interval": [low, high],
                  "coverage": fc.interval, "predicted_gain": gain}
        (self.iter_dir(t) / "forecast.json").write_text(json.dumps(record, indent=2))
        reason = ""
        threshold = fc.stop_when_gain_below
        if threshold is not None and gain < threshold and t + 1 < self.config.loop.iterations and not self.state.halt_reason:
            reason = (f"forecast: predicted validation-error gain {gain:.4f} until D = {target:.4g} {fc.axis} "
                      f"< forecast.stop_when_gain_below {threshold}")
            self.state.halt_reason = reason
        return reason, (d, err, fit, target, (low, high))

    def log_figures(self, t: int, out_dir: Path, metrics: dict, fitted: tuple | None) -> None:
        """The iteration's figures (drivers/plots.py) as MLflow artifacts under plots/iter_NN/."""
        where, gate = f"plots/iter_{t:02d}", self.config.gate
        baseline = [self.state.baseline | {"budget/teacher_samples": 0.0, "budget/teacher_tokens": 0.0}] if self.state.baseline else []
        self.tracker.log_figure(plots.learning_curves(baseline + self.state.history + [metrics]), f"{where}/accuracy.png")
        val_file = out_dir / "val_predictions.parquet"
        if val_file.is_file():
            val = pq.read_table(val_file)
            conf, hit = val.column("confidence").to_numpy(), val.column("correct").to_numpy(zero_copy_only=False)
            curve = reliability_curve(conf, hit, gate.ece_bins, gate.ece_min_per_bin)
            title = f"iteration {t} validation"
            self.tracker.log_figure(plots.reliability_diagram(curve, metrics.get("eval/val_ece", 0.0), title), f"{where}/reliability.png")
        if fitted is not None:
            d, err, fit, target, band = fitted
            label = {"samples": "kept synthetic samples", "tokens": "teacher tokens"}[self.config.forecast.axis]
            self.tracker.log_figure(plots.forecast_figure(d, err, fit, target, band, label), f"{where}/forecast.png")
        limits = {name: getattr(self.config.budget, name) for name in
                  ("teacher_input_tokens", "teacher_output_tokens", "teacher_samples", "accelerator_seconds", "usd")}
        self.tracker.log_figure(plots.budget_figure({k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("budget/")}, limits),
                                f"{where}/budget.png")

    # --- bookkeeping ------------------------------------------------------------------------
    def finish_iteration(self, t: int, out_dir: Path, metrics: dict) -> str:
        """Close the iteration: charge seconds, forecast, log metrics, the gate's decision (a tag),
        figures and artifacts to MLflow, write state. Returns the forecast's stop reason, or ""."""
        self.charge_seconds()
        metrics.update(self.ledger.metrics())
        metrics.update(self.actors.teacher.stats())  # failed requests, truncated answers, retries (cumulative)
        stop, fitted = self.forecast(t, metrics)
        self.tracker.log_metrics(metrics, step=t + 1)  # step 0 is the baseline
        decisions = [d for d in self.state.gate_decisions if d["iteration"] == t]
        if decisions:  # the final decision first, then the reductions that led to it (every decision is logged)
            final, earlier = decisions[-1], decisions[:-1]
            text = f"{final['action']}: {final['reason']}"
            if earlier:
                text += " | after: " + " | ".join(f"attempt {d['attempt']}: {d['reason']}" for d in earlier)
            self.tracker.set_tags({f"gate/iter_{t:02d}": text[:5000]})  # MLflow's tag-value limit
        self.log_figures(t, out_dir, metrics, fitted)
        self.tracker.log_artifacts(out_dir, f"iter_{t:02d}")
        self.state.complete_iteration(metrics)
        self.save_state()
        log.info("iteration %d: %s", t, {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "budget/teacher_tokens"))})
        return stop

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

    def eval_rows(self) -> int:
        return self.splits.validation.num_rows + self.splits.test.num_rows

    def stage_progress(self, label: str, total: int | None):
        """A progress line for one stage (a no-op context without a display)."""
        from contextlib import nullcontext

        return self.progress.stage(label, total) if self.progress is not None else nullcontext(None)

    def save_state(self) -> None:
        self.state.ledger = self.ledger.state()
        self.state.save(self.run_dir)

    def iter_dir(self, t: int) -> Path:
        return self.run_dir / f"iter_{t:02d}"

    def load_synthetic(self) -> pa.Table:
        """The cumulative synthetic set S from the iterations whose generate stage finished (by the
        state, not by the files: a crash between writing iter_NN/synthetic.parquet and state.json
        leaves a file whose rows the resumed generate stage writes again)."""
        done = self.state.iteration + (1 if "generate" in self.state.stages_done else 0)
        paths = [self.iter_dir(t) / "synthetic.parquet" for t in range(done)]
        tables = [pq.read_table(p) for p in paths if p.is_file()]
        return pa.concat_tables([make_table(SYNTHETIC, []), *tables])


# Settings `run --resume RUN_DIR key=value` may change: how far the run goes, what it may spend, where
# and how it runs. Everything else (task, models, strategy, trainer, prompts) would make the resumed run
# a different experiment from its finished part, so changing it is an error naming the key.
RESUMABLE_OVERRIDES = (
    "loop.iterations", "loop.fidelity_metrics", "budget.*", "ray.*",
    "teacher.openai.base_url", "teacher.openai.api_key_env", "teacher.openai.max_concurrency",
    "teacher.openai.requests_per_minute", "teacher.openai.tokens_per_minute", "teacher.openai.max_retries",
    "teacher.openai.backoff_s", "teacher.openai.max_backoff_s", "teacher.openai.timeout_s", "teacher.openai.preflight",
    "teacher.num_replicas", "teacher.num_cpus", "teacher.num_gpus", "teacher.max_restarts", "teacher.batch_size",
    "student.num_cpus", "student.num_gpus", "student.max_restarts", "student.batch_size",
    "trainer.num_cpus_per_rank", "trainer.max_restarts",
)


def make_run_dir(config: RunConfig) -> Path:
    """<output_dir>/<name>-<UTC timestamp>, name = tracking.run_name or <task>-<strategy>-s<seed>.
    Created atomically: a second run started in the same second gets a `-2` (`-3`, ...) suffix."""
    name = config.tracking.run_name or f"{config.task.name}-{config.loop.strategy}-s{config.loop.seed}"
    base = Path(config.tracking.output_dir).resolve() / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_dir = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            run_dir.mkdir(exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"{base}: 999 run directories with this name and second")


def run(config: RunConfig, verbose: bool = True) -> RunSummary:
    """Load data, start Ray and the actors, run the loop, log everything; see the module docstring.
    `verbose` False: Ray workers' output goes to the run's log file only.

    Raises:
        loopdistill.tasks.DataError: a data file is missing or malformed (before anything starts).
        loopdistill.models.ModelLoadError: a model path does not load (before anything starts).
        loopdistill.config.ConfigError: a setting does not fit the model (before anything starts).
        drivers.checkpoint.RunInterrupted: Ctrl-C; the run directory can be resumed.
    """
    from drivers.preflight import check_fits_models

    splits = load_splits(config)
    check_fits_models(config)
    preflight_teacher(config)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(dump_config(config))
    return _drive(config, splits, run_dir, state=None, verbose=verbose)


def resume(run_dir: str | Path, overrides: list[str] | None = None, verbose: bool = True) -> RunSummary:
    """Continue the run in `run_dir` after its last completed stage, in the same MLflow run.
    `overrides`: `section.key=value` of the RESUMABLE_OVERRIDES settings (written to config.json).
    A run that already ended (completed, stopped by the gate or the forecast, or stopped by its
    budget and given no new budget) is returned as it is, without starting Ray or any actor.

    Raises:
        drivers.checkpoint.ResumeError: no such directory, or no readable state.json / config.json.
        loopdistill.config.ConfigError: an override of a setting that must not change (key named).
    """
    from drivers.preflight import check_fits_models

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume {run_dir}: no such directory")
    state = RunState.load(run_dir)
    config_path = run_dir / "config.json"
    try:
        data = json.loads(config_path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object is needed, got {type(data).__name__}")
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise ResumeError(f"cannot resume {run_dir}: {config_path} is unreadable ({str(err).splitlines()[0]})") from None
    overrides = list(overrides or [])
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not any(key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1])) for allowed in RESUMABLE_OVERRIDES):
            raise ConfigError(f"override {key!r} cannot change on resume (it would change the experiment); allowed: {', '.join(RESUMABLE_OVERRIDES)}")
    config = build_config(apply_overrides(data, overrides), str(config_path))
    # A gate or forecast stop is final (ClosedLoop.run honours it): no override makes the run go on.
    if state.stop_reason and (state.halt_reason or state.iteration >= config.loop.iterations or not overrides):
        log.info("%s already ended (%s); nothing to do", run_dir, state.stop_reason)
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            try:
                return RunSummary(**json.loads(summary_file.read_text()))
            except (ValueError, TypeError):
                pass
        return RunSummary(str(run_dir), state.mlflow_run_id, state.iteration, state.stop_reason, state.history)
    # config.json holds URLs redacted (user:pass@ and secret query parameters become ***): such a URL must
    # be given again. Checked only for a run that goes on: an ended run needs no teacher.
    if config.teacher.engine == "openai" and REDACTED in config.teacher.openai.base_url:
        raise ConfigError("teacher.openai.base_url: its credentials were not stored; give teacher.openai.base_url=URL on resume")
    check_fits_models(config)
    preflight_teacher(config)
    if overrides:
        (run_dir / "config.json").write_text(dump_config(config))
        log.info("resuming %s with %s", run_dir, overrides)
    state.stop_reason = ""
    return _drive(config, load_splits(config), run_dir, state, verbose=verbose, overrides=overrides)


def load_splits(config: RunConfig) -> Splits:
    """The task's splits, checked: a non-empty seed pool, ids unique across all splits, and no problem
    (the task's normalised question key, `Task.dedup_key`) in two of seeds/validation/test.

    Raises:
        loopdistill.tasks.DataError: naming the data path and the empty split, the duplicated ids or the shared problem.
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
    shared = decontamination.overlapping_keys(
        get_task(tc.name), {name: getattr(splits, name).column("question").to_pylist() for name in ("seeds", "validation", "test")}
    )
    if shared:
        a, b, question = shared[0]
        raise DataError(f"{tc.data_path}: {len(shared)} question(s) in both {a} and {b}, e.g. {question!r:.80}")
    return splits


def configured_task(config: RunConfig) -> Task:
    """The task named by `config.task` with its run options (Game of 24: `max_number`)."""
    options = {"max_number": config.task.max_number} if config.task.max_number is not None else {}
    return get_task(config.task.name).with_options(**options)


def _drive(config: RunConfig, splits: Splits, run_dir: Path, state: RunState | None, verbose: bool = True,
           overrides: list[str] | None = None) -> RunSummary:
    """Start Ray and the actors, run the loop in the MLflow run (the state's on resume), write and log
    summary.json. Ctrl-C stops it: the MLflow run is marked KILLED and RunInterrupted names the
    directory to resume."""
    from drivers.ray_setup import collect_worker_logs, init_ray

    log_handler, started = attach_run_log(run_dir), time.time()
    try:
        # Started before Ray: on a cluster, tracking-server problems show before any actor is paid for.
        with Tracker(config, run_dir, config.tracking.run_name or run_dir.name, run_id=state.mlflow_run_id if state else None) as tracker:
            state = state or RunState(mlflow_run_id=tracker.run_id)
            state.save(run_dir)
            tracker.log_artifact(run_dir / "config.json")
            if overrides:
                tracker.set_tags({f"resume_override.{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in overrides})
            init_ray(config, run_dir=run_dir, verbose=verbose)
            actors = start_actors(config, run_dir)
            try:
                loop = ClosedLoop(config, configured_task(config), splits, actors, tracker, run_dir, state)
                with RunProgress(lambda: _budget_left(loop.ledger)) as progress:
                    loop.progress = progress
                    done, reason = loop.run()
                state.stop_reason = reason
                loop.save_state()
                tracker.set_tags({"stop_reason": reason, "iterations_completed": str(done)})
            finally:
                try:
                    actors.shutdown()
                except Exception:  # e.g. Ctrl-C also reached the actors: the run's own error matters
                    log.warning("stopping the actors failed", exc_info=True)
            summary = RunSummary(str(run_dir), tracker.run_id, done, reason, state.history)
            (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
            tracker.log_artifact(run_dir / "summary.json")
            tracker.log_artifact(run_dir / "run.log")
    except KeyboardInterrupt:
        raise RunInterrupted(str(run_dir)) from None
    finally:
        collect_worker_logs(run_dir, started)
        detach_run_log(log_handler)
    from rich.console import Console

    Console(stderr=True).print(final_table(summary, state.history, state.baseline))
    return summary


def _budget_left(ledger: BudgetLedger) -> str:
    """What the tightest budget limit has left, e.g. '81% teacher_output_tokens' ('unlimited')."""
    lim, spent = ledger.limits, ledger.metrics()
    pairs = {
        "teacher_input_tokens": spent["budget/teacher_input_tokens"], "teacher_output_tokens": spent["budget/teacher_output_tokens"],
        "teacher_samples": spent["budget/teacher_samples"], "accelerator_seconds": spent["budget/accelerator_seconds"], "usd": spent["budget/usd"],
    }
    left = [(1 - used / limit, name) for name, used in pairs.items() if (limit := getattr(lim, name)) is not None and limit > 0]
    if not left:
        return "unlimited"
    fraction, name = min(left)
    return f"{max(fraction, 0):.0%} {name}"
