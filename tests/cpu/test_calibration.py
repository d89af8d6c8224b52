import numpy as np
import pytest

from drivers.calibration import equal_count_bins, expected_calibration_error, reliability_curve


def test_perfectly_calibrated_is_zero():
    conf = np.array([0.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(conf, [False, False, True, True], num_bins=2, min_per_bin=2) == 0.0


def test_overconfident_wrong_answers():
    assert expected_calibration_error([0.9] * 4, [False] * 4) == pytest.approx(0.9)


def test_equal_count_bins():
    # two bins of two: |0.5 - 0.15| * 0.5 + |1.0 - 0.85| * 0.5
    ece = expected_calibration_error([0.1, 0.2, 0.8, 0.9], [True, False, True, True], num_bins=2, min_per_bin=2)
    assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


def test_min_per_bin_merges_bins():
    """8 answers, at least 10 per bin: one bin, ECE = |accuracy - mean confidence|, not the mean
    per-answer |correct - confidence| that one answer per bin would give."""
    conf = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    hit = np.array([1, 0, 0, 1, 0, 1, 1, 0], dtype=bool)
    assert expected_calibration_error(conf, hit, num_bins=10, min_per_bin=10) == pytest.approx(abs(0.5 - 0.5))
    per_answer = np.mean(np.abs(hit - conf))
    assert expected_calibration_error(conf, hit, num_bins=10, min_per_bin=1) == pytest.approx(per_answer)


@pytest.mark.parametrize("n", [1, 9, 10, 25, 99, 100, 101, 1000])
def test_every_bin_holds_at_least_min_per_bin(n):
    conf = np.random.default_rng(n).random(n)
    bins = equal_count_bins(conf, num_bins=10, min_per_bin=10)
    assert sum(len(b) for b in bins) == n and len(bins) <= 10
    assert all(len(b) >= 10 for b in bins) or (len(bins) == 1 and n < 10)
    assert max(len(b) for b in bins) - min(len(b) for b in bins) <= 1
    # bins are in order of rising confidence
    assert all(conf[a].max() <= conf[b].min() for a, b in zip(bins, bins[1:]))


def test_reliability_curve_matches_ece():
    rng = np.random.default_rng(0)
    conf = rng.random(200)
    hit = rng.random(200) < conf ** 2
    curve = reliability_curve(conf, hit, num_bins=10, min_per_bin=10)
    assert curve["count"].sum() == 200 and len(curve["count"]) == 10
    ece = float(np.sum(curve["count"] / 200 * np.abs(curve["accuracy"] - curve["confidence"])))
    assert expected_calibration_error(conf, hit, 10, 10) == pytest.approx(ece)
    assert np.all(curve["accuracy"] <= curve["confidence"] + 0.25)  # overconfident by construction


def test_bad_input():
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.5], [True])
    with pytest.raises(ValueError):
        expected_calibration_error([float("nan")], [True])
    assert expected_calibration_error([], []) == 0.0


def test_reliability_diagram_plots_the_bins():
    from drivers.plots import reliability_diagram

    rng = np.random.default_rng(1)
    conf = rng.random(60)
    curve = reliability_curve(conf, rng.random(60) < conf, num_bins=10, min_per_bin=20)
    fig = reliability_diagram(curve, 0.1, "validation")
    line = fig.axes[0].lines[1]  # [0] is the diagonal
    assert np.allclose(line.get_xdata(), curve["confidence"]) and np.allclose(line.get_ydata(), curve["accuracy"])
    assert len(curve["count"]) == 3 and "ECE 0.100" in fig.axes[0].get_title()
