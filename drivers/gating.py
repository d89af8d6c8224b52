"""The calibration gate: a pure decision on validation metrics (no Ray, no I/O).

Source: "Characterizing Model Behavior Under Synthetic Data Training" (arXiv 2510.05133): in iterated
training on synthetic data, calibration error on held-out data rises before accuracy falls; its rule
of thumb is to act when ECE rises by ~50% while accuracy is flat, and to keep synthetic data at or
below 20-30% of the training mix.

Rule, after iteration t >= gate.first_iteration, with (ece_a, acc_a) of the last *accepted* iteration
(the untrained baseline before any) and (ece_t, acc_t) of iteration t, both on the validation split:

    rise = (ece_t - ece_a) / max(ece_a, gate.ece_floor)
    fire = rise > gate.ece_rise and (acc_t - acc_a) <= gate.min_accuracy_gain

Actions when it fires:
- halt: stop the run cleanly; finished iterations stay; the student is the last accepted adapter.
- rollback: the student goes back to the last accepted adapter; iteration t's synthetic rows stay on
  disk but are excluded from training from then on; the loop continues.
- reduce_synthetic_ratio: trainer.synthetic_fraction -= gate.ratio_step (not below
  gate.min_synthetic_fraction, nor below what the seed pool can supply) and iteration t is retrained
  and judged again; when the fraction cannot go lower, the gate falls back to rollback (going on from
  an adapter it judged miscalibrated would defeat the gate).
- off: never acts (the rise is still computed and logged).

Default action: rollback. It never loses a good student (halt on a noisy small validation split ends
a study early and leaves a strategy comparison with fewer points), it keeps the run's budget and
iteration count the same for every strategy, and unlike reduce_synthetic_ratio it needs no seed pool
as large as the synthetic set. Iteration 0 is not judged by default (gate.first_iteration = 1): the
untrained student often cannot write the answer format, so its near-zero confidence gives an ECE that
any trained adapter "exceeds".
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from loopdistill.config import GateConfig

ACCEPT, HALT, ROLLBACK, REDUCE = "accept", "halt", "rollback", "reduce_synthetic_ratio"
# MLflow metric code of each decision (gate/decision), so a chart shows where the gate acted.
DECISION_CODES = {ACCEPT: 0, HALT: 1, ROLLBACK: 2, REDUCE: 3}


@dataclass(frozen=True)
class GateDecision:
    """One decision. `action` is one of accept / halt / rollback / reduce_synthetic_ratio (off gives
    accept with fired possibly True); `synthetic_fraction` is the fraction to use from now on."""

    iteration: int
    attempt: int  # 0 for the iteration's first judgement, k after its k-th retrain
    action: str
    fired: bool
    ece_rise: float  # relative
    accuracy_gain: float  # absolute
    ece: float
    accuracy: float
    reference_ece: float
    reference_accuracy: float
    reference_iteration: int  # the last accepted iteration compared with (-1 = baseline)
    synthetic_fraction: float
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def relative_rise(ece: float, reference_ece: float, floor: float) -> float:
    """(ece - reference) / max(reference, floor): the ECE's relative rise, with small references
    counted as `floor` (a rise from 0.0 is otherwise infinite)."""
    return (ece - reference_ece) / max(reference_ece, floor, 1e-12)


def decide(config: GateConfig, iteration: int, attempt: int, ece: float, accuracy: float,
           reference_ece: float, reference_accuracy: float, reference_iteration: int,
           synthetic_fraction: float, lowest_fraction: float = 0.0) -> GateDecision:
    """The gate's decision for iteration `iteration` (see the module docstring for the rule).

    ece / accuracy: validation ECE and accuracy (fractions in [0, 1]) of the iteration; reference_*:
    of the last accepted iteration. synthetic_fraction: trainer's current synthetic / total fraction;
    lowest_fraction: the smallest fraction the seed pool can supply for this training set (no
    reduction goes below it).
    """
    rise = relative_rise(ece, reference_ece, config.ece_floor)
    gain = accuracy - reference_accuracy
    judged = iteration >= config.first_iteration
    fired = judged and rise > config.ece_rise and gain <= config.min_accuracy_gain
    action, fraction = ACCEPT, synthetic_fraction
    what = f"val ECE {reference_ece:.3f} -> {ece:.3f} ({rise:+.0%}), accuracy {gain:+.3f} vs iteration {reference_iteration}"
    if not judged:
        reason = f"iteration {iteration} is before gate.first_iteration {config.first_iteration}: accepted"
    elif not fired or config.action == "off":
        reason = f"accepted: {what}" + (" (gate off: it would have fired)" if fired else "")
    elif config.action == "halt":
        action, reason = HALT, f"gate halt: {what}"
    elif config.action == "rollback":
        action, reason = ROLLBACK, f"gate rollback to iteration {reference_iteration}: {what}"
    else:
        # Rounded before the max: 1.0 - 0.25 - 0.25 stays 0.5, and lowest_fraction stays exact (a
        # rounded-down lowest would ask the seed pool for one row more than it has).
        lowered = max(round(synthetic_fraction - config.ratio_step, 9), config.min_synthetic_fraction, lowest_fraction)
        if lowered < synthetic_fraction:
            action, fraction = REDUCE, lowered
            reason = f"gate reduce_synthetic_ratio {synthetic_fraction:.3g} -> {lowered:.3g}, retrain: {what}"
        else:
            action = ROLLBACK
            reason = (f"gate rollback to iteration {reference_iteration} (synthetic fraction {synthetic_fraction:.3g} "
                      f"cannot go lower): {what}")
    return GateDecision(iteration, attempt, action, fired, rise, gain, ece, accuracy, reference_ece,
                        reference_accuracy, reference_iteration, fraction, reason)

