"""Steps 2-3: gather the signals the strategy needs beyond the student's predictions (the reference
answer's loss and BADGE embeddings from the student, rewards from the reward model or the verifier,
LLM-judge verdicts through the teacher client, charged to the budget), score every seed of the pool
and choose m of them.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import ray

from drivers import fidelity, judge, selection
from drivers.context import RunContext, StageInputs, StageResult
from drivers.selection import get_strategy
from drivers.signals import Signals
from loopdistill.seeds import draw_seed

TABLES = ("scores", "selected")


def run(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """{"scores": SCORES of the n seeds, "selected": the m selected SEEDS rows} from
    inputs.tables["predictions"] (PREDICTIONS of the pool, pool order). Stops (no tables) when the
    budget cannot pay for the judge."""
    loop, t, seeds = ctx.config.loop, inputs.iteration, ctx.splits.seeds
    predictions = inputs.tables["predictions"]
    signals, metrics, reason = gather(ctx, predictions, t)
    if reason:
        return StageResult(stop_reason=reason)
    scores, idx = selection.choose(loop.strategy, signals, loop.seeds_per_iteration, loop.sampling, loop.softmax_temperature, draw_seed(loop.seed, t, "select"))
    losses = predictions.column("loss").to_numpy()
    metrics.update(fidelity.selection_summary(scores.column("score").to_numpy(), idx))
    metrics.update({
        "predict/pool_accuracy": float(np.mean(predictions.column("correct").to_numpy(zero_copy_only=False))),
        "select/pool_mean_loss": float(losses.mean()),
        "select/selected_mean_loss": float(losses[idx].mean()),
        "select/selected": len(idx),
    })
    return StageResult(tables={"scores": scores, "selected": seeds.take(pa.array(idx, pa.int64()))}, metrics=metrics)


def gather(ctx: RunContext, predictions: pa.Table, t: int) -> tuple[Signals | None, dict[str, float], str]:
    """(Signals of the n seeds, metrics, stop reason). Signals is None only with a stop reason (the
    budget could not pay for the judge)."""
    needs = get_strategy(ctx.config.loop.strategy).needs
    seeds, adapter, student = ctx.splits.seeds, ctx.state.adapter_dir, ctx.actors.student
    extra, metrics = {}, {}
    if "gt_loss" in needs:
        extra["gt_loss"] = _column(ray.get(student.reference_loss.remote(seeds, adapter)), seeds, "gt_loss")
    if "reward" in needs:
        extra["reward"] = rewards(ctx, predictions)
    if "embedding" in needs:
        dim, seed = ctx.config.loop.badge_projection_dim, draw_seed(ctx.config.loop.seed, t, "badge")
        table = ray.get(student.gradient_embeddings.remote(seeds, predictions, adapter, dim, seed))
        extra["embedding"] = np.array(_column(table, seeds, "embedding").tolist(), dtype=np.float64)
    if "judge" in needs:
        verdicts, reason = judge_pool(ctx, predictions, t)
        if reason:
            return None, metrics, reason
        extra["judge_gap"] = verdicts.gap
        metrics.update({
            "judge/teacher_mean_score": float(verdicts.teacher_score.mean()),
            "judge/student_mean_score": float(verdicts.student_score.mean()),
            "judge/unparseable": verdicts.unparseable,
        })
    return Signals.from_predictions(predictions, **extra), metrics, ""


def rewards(ctx: RunContext, predictions: pa.Table) -> np.ndarray:
    """r(x, y_hat) per seed: the reward model's logit, or 1.0/0.0 from the verifier."""
    if ctx.config.reward.source == "verifier":
        return np.asarray(predictions.column("correct").to_numpy(zero_copy_only=False), dtype=float)
    seeds = ctx.splits.seeds
    return _column(ray.get(ctx.actors.reward.score.remote(seeds, predictions)), seeds, "reward")


def judge_pool(ctx: RunContext, predictions: pa.Table, t: int) -> tuple[judge.Verdicts | None, str]:
    """The teacher answers every seed (sampled as configured), then judges its answer against the
    student's in both orders (greedy, loop.judge_max_new_tokens). All or nothing: a budget that pays
    for part of either call stops the run."""
    rows, loop = ctx.splits.seeds.to_pylist(), ctx.config.loop
    requests = judge.teacher_answer_requests(ctx.task, rows, t)
    answers = ctx.teacher.ask(requests, t, "judge-answer")
    reason = _short(answers, requests)
    if reason:
        return None, reason
    requests = judge.judge_requests(rows, answers.responses.column("text").to_pylist(), predictions.column("prediction").to_pylist(), t)
    verdicts = ctx.teacher.judge(requests, t, loop.judge_max_new_tokens)
    reason = _short(verdicts, requests)
    return (None, reason) if reason else (judge.parse_verdicts(verdicts.responses, len(rows)), "")


def _short(reply, requests: pa.Table) -> str:
    if not reply.stop_reason and reply.responses.num_rows < requests.num_rows:
        return f"budget exhausted: the judge needs {requests.num_rows} teacher requests, the budget paid for {reply.responses.num_rows}"
    return reply.stop_reason


def _column(table: pa.Table, seeds: pa.Table, name: str) -> np.ndarray:
    if table.column("id").to_pylist() != seeds.column("id").to_pylist():
        raise ValueError(f"signal {name!r}: the actor returned rows out of the seed pool's order")
    return table.column(name).to_numpy(zero_copy_only=False)
