"""The gate's decisions on constructed validation-metric series, one test per action."""
import pytest

from drivers import gating
from loopdistill.config import GateConfig

# baseline, then iterations 0..3: ECE jumps at iteration 2 (0.15 -> 0.40, +167%) with flat accuracy.
ECE = [0.02, 0.10, 0.15, 0.40, 0.41]
ACC = [0.00, 0.10, 0.20, 0.20, 0.21]


def actions(decisions):
    return [(d.iteration, d.attempt, d.action) for d in decisions]


def test_off_accepts_everything_but_still_measures():
    out = gating.decide_series(GateConfig(action="off"), ECE, ACC)
    assert [d.action for d in out] == ["accept"] * 4
    assert out[2].fired and "would have fired" in out[2].reason
    assert out[2].ece_rise == pytest.approx((0.40 - 0.15) / 0.15)


def test_halt_stops_at_the_jump():
    out = gating.decide_series(GateConfig(action="halt"), ECE, ACC)
    assert actions(out) == [(0, 0, "accept"), (1, 0, "accept"), (2, 0, "halt")]
    assert out[-1].reference_iteration == 1 and "gate halt" in out[-1].reason


def test_rollback_compares_later_iterations_with_the_last_accepted_one():
    out = gating.decide_series(GateConfig(action="rollback"), ECE, ACC)
    # iteration 3 is compared with iteration 1 (the last accepted), not with the rolled-back 2
    assert actions(out) == [(0, 0, "accept"), (1, 0, "accept"), (2, 0, "rollback"), (3, 0, "rollback")]
    assert out[3].reference_iteration == 1 and out[3].reference_ece == 0.15


def test_reduce_synthetic_ratio_retrains_until_calibrated():
    cfg = GateConfig(action="reduce_synthetic_ratio", ratio_step=0.25, min_synthetic_fraction=0.25)
    # the first retrain (fraction 0.75) is still miscalibrated, the second (0.5) is fine
    retrained = {(2, 1): (0.39, 0.20), (2, 2): (0.17, 0.20)}
    out = gating.decide_series(cfg, ECE[:4], ACC[:4], synthetic_fraction=1.0, retrained=retrained)
    assert actions(out) == [(0, 0, "accept"), (1, 0, "accept"), (2, 0, "reduce_synthetic_ratio"),
                            (2, 1, "reduce_synthetic_ratio"), (2, 2, "accept")]
    assert [d.synthetic_fraction for d in out] == [1.0, 1.0, 0.75, 0.5, 0.5]


def test_reduce_synthetic_ratio_falls_back_to_rollback_at_the_floor():
    cfg = GateConfig(action="reduce_synthetic_ratio", ratio_step=0.5, min_synthetic_fraction=0.3)
    out = gating.decide_series(cfg, ECE[:4], ACC[:4], synthetic_fraction=1.0)  # retrains change nothing
    assert [(d.action, d.synthetic_fraction) for d in out[2:]] == [("reduce_synthetic_ratio", 0.5),
                                                                  ("reduce_synthetic_ratio", 0.3), ("rollback", 0.3)]
    # the seed pool's limit counts too: it cannot go below 0.8 here
    out = gating.decide_series(cfg, ECE[:4], ACC[:4], synthetic_fraction=1.0, lowest_fraction=0.8)
    assert [(d.action, d.synthetic_fraction) for d in out[2:]] == [("reduce_synthetic_ratio", 0.8), ("rollback", 0.8)]


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
