"""After evaluate: the calibration gate (drivers/gating.py; arXiv 2510.05133) accepts the new adapter,
or halts, rolls back or retrains at a lower synthetic fraction; then the rectified scaling-law
forecast (drivers/scaling.py; SynthLLM, arXiv 2503.19551, Sec. 3) of validation error against the
synthetic data spent.

The gate's decisions and retrains are saved in the run state as they are taken (each retrain as a
stage "retrain<k>"), so a resumed run neither decides nor trains anything twice.
"""
from __future__ import annotations

import json
import logging

import numpy as np

from drivers import gating, mixing, scaling
from drivers.context import RunContext, StageInputs, StageResult
from drivers.stages import evaluate, train
from loopdistill.seeds import draw_seed

log = logging.getLogger("loopdistill")

TABLES = ()


def run(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """The gate on iteration t's validation metrics (inputs.metrics: eval/val_ece, eval/val_accuracy)
    against the last accepted iteration (the untrained baseline before any). Under
    reduce_synthetic_ratio it retrains (train + evaluate, recorded through ctx.checkpoint) and judges
    again. Returns gate/* metrics (and a retrain's), and the halt reason as stop_reason."""
    t, state = inputs.iteration, ctx.state
    metrics = dict(inputs.metrics)
    changed: dict[str, float] = {}
    while True:
        taken = [d for d in state.gate_decisions if d["iteration"] == t]
        if taken and taken[-1]["action"] != gating.REDUCE:
            break
        if taken and f"retrain{len(taken)}" not in state.stages_done:
            trained = train.run(ctx, inputs, attempt=len(taken))
            evaluated = evaluate.run(ctx, inputs)
            retrained = {**trained.metrics, **evaluated.metrics}
            metrics.update(retrained)
            changed.update(retrained)
            ctx.checkpoint(t, f"retrain{len(taken)}", StageResult(evaluated.tables, retrained, series=trained.series))
            continue
        reference = state.accepted_metrics or state.baseline
        usable = mixing.excluded_rows_removed(inputs.synthetic, state.excluded_iterations).num_rows
        decision = gating.decide(
            ctx.config.gate, t, len(taken), metrics["eval/val_ece"], metrics["eval/val_accuracy"],
            reference.get("eval/val_ece", 0.0), reference.get("eval/val_accuracy", 0.0), state.accepted_iteration,
            train.synthetic_fraction(ctx), mixing.lowest_fraction(usable, ctx.splits.seeds.num_rows),
        )
        log.info("iteration %d: %s", t, decision.reason)
        state.gate_decisions.append(decision.as_dict())
        if decision.action == gating.REDUCE:
            state.synthetic_fraction = decision.synthetic_fraction
        ctx.save_state()
    applied, reason = apply(ctx, t, taken[-1], metrics)
    return StageResult(metrics={**changed, **applied}, stop_reason=reason)


def apply(ctx: RunContext, t: int, decision: dict, metrics: dict[str, float]) -> tuple[dict[str, float], str]:
    """Act on iteration t's final gate decision (idempotent: a resume may apply it again). Returns
    (gate/* metrics, the halt reason or "")."""
    state, action = ctx.state, decision["action"]
    if action == gating.ACCEPT:
        state.accepted_iteration, state.accepted_adapter = t, state.adapter_dir
        state.accepted_metrics = {k: metrics[k] for k in ("eval/val_ece", "eval/val_accuracy")}
    else:  # halt and rollback: the student goes back to the last accepted adapter
        state.adapter_dir = state.accepted_adapter
        if action == gating.ROLLBACK and t not in state.excluded_iterations:
            state.excluded_iterations.append(t)
        if action == gating.HALT:
            state.halt_reason = decision["reason"]
    out = {
        "gate/decision": gating.DECISION_CODES[action], "gate/fired": float(decision["fired"]),
        "gate/ece_rise": decision["ece_rise"], "gate/accuracy_gain": decision["accuracy_gain"],
        "gate/retrains": decision["attempt"], "gate/synthetic_fraction": train.synthetic_fraction(ctx),
        "gate/accepted_iteration": state.accepted_iteration,
    }
    return out, state.halt_reason if action == gating.HALT else ""


def forecast(ctx: RunContext, inputs: StageInputs) -> StageResult:
    """Fit the rectified law to (D, validation error) of the baseline (D = 0) and every finished
    iteration, inputs.metrics being iteration t's (with its budget/* figures); forecast the error at
    what the remaining budget buys (or at D * forecast.horizon_multiple without a limit) with a
    bootstrap interval. Writes iter_NN/forecast.json (the forecast figure's input) when it fits.
    Returns forecast/* metrics, and a stop reason when forecast.stop_when_gain_below applies (then
    also ctx.state.halt_reason: a resume must not run on)."""
    t, state, fc = inputs.iteration, ctx.state, ctx.config.forecast
    (ctx.iter_dir(t) / "forecast.json").unlink(missing_ok=True)  # a crashed attempt's: the figure reads this file
    key = {"samples": "budget/teacher_samples", "tokens": "budget/teacher_tokens"}[fc.axis]
    rows = ([state.baseline | {key: 0.0}] if state.baseline else []) + state.history + [dict(inputs.metrics)]
    rows = [r for r in rows if "eval/val_accuracy" in r and key in r]
    d = np.array([r[key] for r in rows], dtype=float)
    err = np.array([1.0 - r["eval/val_accuracy"] for r in rows])
    if not fc.enabled or len(d) < fc.min_points or np.unique(d).size < 2 or d[-1] <= 0:
        return StageResult()
    try:
        fit = scaling.fit_rectified_law(d, err)
    except ValueError as error:
        log.warning("iteration %d: no forecast: %s", t, error)
        return StageResult()
    left = scaling.remaining_on_axis(fc.axis, inputs.metrics, ctx.config.budget, d[-1])
    target = d[-1] + left if left is not None else d[-1] * fc.horizon_multiple
    low, high = scaling.bootstrap_forecast(d, err, fit, target, fc.bootstrap, fc.interval, seed=draw_seed(ctx.config.loop.seed, t, "forecast"))
    at_target, now = float(fit.predict(target)), float(fit.predict(d[-1]))
    gain = now - at_target
    metrics = {
        "forecast/B": fit.B, "forecast/D_l": fit.D_l, "forecast/beta": fit.beta, "forecast/E": fit.E,
        "forecast/rmse": fit.rmse, "forecast/points": len(d), "forecast/target_D": target,
        "forecast/val_error_at_target": at_target, "forecast/val_error_low": low, "forecast/val_error_high": high,
        "forecast/predicted_gain": gain,
    }
    record = {"axis": fc.axis, "D": d.tolist(), "val_error": err.tolist(), "fit": fit.as_dict(), "target_D": target,
              "budget_limited": left is not None, "val_error_at_target": at_target, "interval": [low, high],
              "coverage": fc.interval, "predicted_gain": gain}
    (ctx.iter_dir(t) / "forecast.json").write_text(json.dumps(record, indent=2))
    reason = ""
    threshold = fc.stop_when_gain_below
    if threshold is not None and gain < threshold and t + 1 < ctx.config.loop.iterations and not state.halt_reason:
        reason = (f"forecast: predicted validation-error gain {gain:.4f} until D = {target:.4g} {fc.axis} "
                  f"< forecast.stop_when_gain_below {threshold}")
        state.halt_reason = reason
    return StageResult(metrics=metrics, stop_reason=reason)
