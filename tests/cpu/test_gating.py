"""The gate's decision (drivers/gating.decide) on constructed validation metrics, one test per action.
How the loop chains decisions over iterations (the reference moves only on accept, a halt ends the run)
is tested on the real loop in test_gate_loop.py."""
import pytest

from drivers import gating
from loopdistill.config import GateConfig

# Iteration 2 against the last accepted iteration 1: ECE 0.15 -> 0.40 (+167%) with flat accuracy.
JUMP = dict(iteration=2, ece=0.40, accuracy=0.20, reference_ece=0.15, reference_accuracy=0.20, reference_iteration=1)


def test_off_accepts_but_still_measures():
    d = gating.decide(GateConfig(action="off"), attempt=0, synthetic_fraction=1.0, **JUMP)
    assert d.action == "accept" and d.fired and "would have fired" in d.reason
    assert d.ece_rise == pytest.approx((0.40 - 0.15) / 0.15)
    assert d.accuracy_gain == pytest.approx(0.0)


def test_halt_fires_at_the_jump_only():
    cfg = GateConfig(action="halt")
    d = gating.decide(cfg, attempt=0, synthetic_fraction=1.0, **JUMP)
    assert d.action == "halt" and d.reference_iteration == 1 and "gate halt" in d.reason
    # iteration 1 against iteration 0: ECE +50% (not above gate.ece_rise 0.5) and accuracy +0.10
    assert gating.decide(cfg, 1, 0, 0.15, 0.20, 0.10, 0.10, 0, 1.0).action == "accept"


def test_rollback_names_the_last_accepted_iteration():
    d = gating.decide(GateConfig(action="rollback"), attempt=0, synthetic_fraction=1.0, **JUMP)
    assert d.action == "rollback" and d.reference_ece == 0.15
    assert "rollback to iteration 1" in d.reason


def test_reduce_synthetic_ratio_steps_down_then_accepts():
    cfg = GateConfig(action="reduce_synthetic_ratio", ratio_step=0.25, min_synthetic_fraction=0.25)
    first = gating.decide(cfg, attempt=0, synthetic_fraction=1.0, **JUMP)
    assert (first.action, first.synthetic_fraction) == ("reduce_synthetic_ratio", 0.75)
    # the first retrain (fraction 0.75) is still miscalibrated, the second (0.5) is fine
    second = gating.decide(cfg, 2, 1, 0.39, 0.20, 0.15, 0.20, 1, first.synthetic_fraction)
    assert (second.action, second.synthetic_fraction) == ("reduce_synthetic_ratio", 0.5)
    third = gating.decide(cfg, 2, 2, 0.17, 0.20, 0.15, 0.20, 1, second.synthetic_fraction)
    assert (third.action, third.synthetic_fraction, third.fired) == ("accept", 0.5, False)


def test_reduce_synthetic_ratio_falls_back_to_rollback_at_the_floor():
    cfg = GateConfig(action="reduce_synthetic_ratio", ratio_step=0.5, min_synthetic_fraction=0.3)

    def steps(fraction, lowest=0.0):
        out = []
        for attempt in range(3):  # retrains change nothing here
            d = gating.decide(cfg, attempt=attempt, synthetic_fraction=fraction, lowest_fraction=lowest, **JUMP)
            out.append((d.action, d.synthetic_fraction))
            if d.action != "reduce_synthetic_ratio":
                return out
            fraction = d.synthetic_fraction
        return out

    assert steps(1.0) == [("reduce_synthetic_ratio", 0.5), ("reduce_synthetic_ratio", 0.3), ("rollback", 0.3)]
    # the seed pool's limit counts too: it cannot go below 0.8 here
    assert steps(1.0, lowest=0.8) == [("reduce_synthetic_ratio", 0.8), ("rollback", 0.8)]


def test_accuracy_gain_tolerates_a_rising_ece():
    cfg = GateConfig(action="halt", min_accuracy_gain=0.05)
    assert not gating.decide(cfg, 2, 0, 0.40, 0.30, 0.15, 0.20, 1, 1.0).fired  # +0.10 accuracy
    assert gating.decide(cfg, 2, 0, 0.40, 0.24, 0.15, 0.20, 1, 1.0).fired  # +0.04 accuracy


def test_small_ece_floor_and_first_iteration():
    cfg = GateConfig(action="halt")  # ece_floor 0.05, first_iteration 1
    # from 0.0 to 0.02 is a rise of 0.4 (counted against the floor), not +inf
    assert not gating.decide(cfg, 1, 0, 0.02, 0.0, 0.0, 0.0, 0, 1.0).fired
    assert gating.decide(cfg, 1, 0, 0.03, 0.0, 0.0, 0.0, 0, 1.0).fired
    # iteration 0 (against the untrained student) is not judged by default
    assert gating.decide(cfg, 0, 0, 0.9, 0.0, 0.0, 0.0, -1, 1.0).action == "accept"


def test_forced_gate_fires_on_a_flat_series():
    """What the loop tests use: ece_rise below -1 fires on any series (here ECE 0 throughout)."""
    cfg = GateConfig(action="halt", ece_rise=-2.0)
    assert gating.decide(cfg, 1, 0, 0.0, 0.0, 0.0, 0.0, 0, 1.0).action == "halt"


def test_reduction_to_the_seed_pool_limit_is_feasible():
    """A fraction cut at the seed pool's limit asks for exactly the pool, not one row more."""
    from drivers import mixing

    for n, pool in [(8, 7), (100, 33), (1536, 768), (7, 3)]:
        lowest = mixing.lowest_fraction(n, pool)
        cfg = GateConfig(action="reduce_synthetic_ratio", ratio_step=0.9, min_synthetic_fraction=0.01)
        d = gating.decide(cfg, 1, 0, 0.5, 0.0, 0.1, 0.0, 0, 1.0, lowest)
        assert d.action == "reduce_synthetic_ratio" and d.synthetic_fraction == lowest
        assert mixing.seeds_needed(n, d.synthetic_fraction) == pool
