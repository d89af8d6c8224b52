import numpy as np
import pytest

from drivers.calibration import expected_calibration_error


def test_perfectly_calibrated_is_zero():
    conf = np.array([0.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(conf, [False, False, True, True], num_bins=2) == 0.0


def test_overconfident_wrong_answers():
    assert expected_calibration_error([0.9] * 4, [False] * 4) == pytest.approx(0.9)


def test_equal_count_bins():
    # two bins of two: |0.5 - 0.15| * 0.5 + |1.0 - 0.85| * 0.5
    ece = expected_calibration_error([0.1, 0.2, 0.8, 0.9], [True, False, True, True], num_bins=2)
    assert ece == pytest.approx(0.5 * 0.35 + 0.5 * 0.15)


def test_bad_input():
    with pytest.raises(ValueError):
        expected_calibration_error([1.5], [True])
    with pytest.raises(ValueError):
        expected_calibration_error([0.5, 0.5], [True])
    assert expected_calibration_error([], []) == 0.0
