"""Gather the signals a selection strategy needs beyond the student's predictions (step 2 of
Algorithm 1): the reference-answer loss and BADGE embeddings from the student, rewards from the reward
model (or the verifier), and LLM-judge verdicts through the teacher pool (charged to the budget).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa
import ray

from loopdistill.seeds import teacher_seed
from drivers import judge
from drivers.selection import get_strategy
from drivers.signals import Signals
from loopdistill.config import RunConfig
from loopdistill.tasks import Task

# (requests, seed, max_new_tokens, temperature) -> (responses, stop reason); the loop's budgeted call.
AskTeacher = Callable[[pa.Table, int, int, float], tuple[pa.Table, str]]


class SignalGatherer:
    """Builds the Signals of the seed pool for the configured strategy.

    Args:
        config: the run config (strategy, reward source, BADGE dimension, judge length).
        task: the task (prompts for the judge's teacher answers).
        actors: drivers.actor_group.Actors (student, optional reward model).
        ask_teacher: the loop's budgeted teacher call.
    """

    def __init__(self, config: RunConfig, task: Task, actors, ask_teacher: AskTeacher):
        self.config, self.task, self.actors, self.ask_teacher = config, task, actors, ask_teacher

    def gather(self, seeds: pa.Table, predictions: pa.Table, adapter_dir: str | None, t: int) -> tuple[Signals | None, dict, str]:
        """(Signals, metrics, stop reason). seeds: SEEDS of the pool (n); predictions: the student's
        PREDICTIONS of the same n seeds, same order. Signals is None only with a stop reason (the
        budget could not pay for the judge)."""
        needs = get_strategy(self.config.loop.strategy).needs
        extra, metrics = {}, {}
        student = self.actors.student
        if "gt_loss" in needs:
            table = ray.get(student.reference_loss.remote(seeds, adapter_dir))
            extra["gt_loss"] = self._column(table, seeds, "gt_loss")
        if "reward" in needs:
            extra["reward"] = self.rewards(seeds, predictions)
        if "embedding" in needs:
            dim, seed = self.config.loop.badge_projection_dim, self.config.loop.seed + t
            table = ray.get(student.gradient_embeddings.remote(seeds, predictions, adapter_dir, dim, seed))
            extra["embedding"] = np.array(self._column(table, seeds, "embedding").tolist(), dtype=np.float64)
        if "judge" in needs:
            verdicts, reason = self.judge(seeds, predictions, t)
            if reason:
                return None, metrics, reason
            extra["judge_gap"] = verdicts.gap
            metrics.update({
                "judge/teacher_mean_score": float(verdicts.teacher_score.mean()),
                "judge/student_mean_score": float(verdicts.student_score.mean()),
                "judge/unparseable": verdicts.unparseable,
            })
        return Signals.from_predictions(predictions, **extra), metrics, ""

    def rewards(self, seeds: pa.Table, predictions: pa.Table) -> np.ndarray:
        """r(x, y_hat) per seed: the reward model's logit, or 1.0/0.0 from the verifier."""
        if self.config.reward.source == "verifier":
            return np.asarray(predictions.column("correct").to_numpy(zero_copy_only=False), dtype=float)
        table = ray.get(self.actors.reward.score.remote(seeds, predictions))
        return self._column(table, seeds, "reward")

    def judge(self, seeds: pa.Table, predictions: pa.Table, t: int) -> tuple[judge.Verdicts | None, str]:
        """The teacher answers every seed, then judges both answers in both orders (greedy)."""
        rows, loop = seeds.to_pylist(), self.config.loop
        answers, reason = self._ask_all(judge.teacher_answer_requests(self.task, rows, t), teacher_seed(loop.seed, t, "judge-answer"), None, None)
        if reason:
            return None, reason
        requests = judge.judge_requests(rows, answers.column("text").to_pylist(), predictions.column("prediction").to_pylist(), t)
        # Greedy: the teacher keys these with seed 0, so a repeated judge prompt is paid once per run.
        verdicts, reason = self._ask_all(requests, teacher_seed(loop.seed, t, "judge"), loop.judge_max_new_tokens, 0.0)
        return (None, reason) if reason else (judge.parse_verdicts(verdicts, len(rows)), "")

    def _ask_all(self, requests: pa.Table, seed: int, max_new_tokens, temperature) -> tuple[pa.Table, str]:
        responses, reason = self.ask_teacher(requests, seed, max_new_tokens, temperature)
        if not reason and responses.num_rows < requests.num_rows:
            reason = f"budget exhausted: the judge needs {requests.num_rows} teacher requests, the budget paid for {responses.num_rows}"
        return responses, reason

    @staticmethod
    def _column(table: pa.Table, seeds: pa.Table, name: str) -> np.ndarray:
        if table.column("id").to_pylist() != seeds.column("id").to_pylist():
            raise ValueError(f"signal {name!r}: the actor returned rows out of the seed pool's order")
        return table.column(name).to_numpy(zero_copy_only=False)
