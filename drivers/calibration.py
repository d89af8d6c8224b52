"""Calibration error of the student's answers (the calibration gate's input).

Source: adaptive (equal-count) binning ECE as recommended by Nixon et al. 2019, "Measuring Calibration
in Deep Learning"; used as an early signal of self-training collapse in arXiv 2510.05133.
"""
from __future__ import annotations

import numpy as np


def expected_calibration_error(confidence, correct, num_bins: int = 10) -> float:
    """ECE with equal-count bins.

    confidence: shape (n,), probabilities in [0, 1]; correct: shape (n,), bools.
    Returns sum_b (|b|/n) * |mean(correct_b) - mean(confidence_b)|, in [0, 1]; 0.0 for n = 0.

    Raises:
        ValueError: shapes differ or a confidence is outside [0, 1] or not finite.
    """
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence shape {conf.shape} != correct shape {hit.shape}")
    if conf.size == 0:
        return 0.0
    if not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidences must be finite probabilities in [0, 1]")
    order = np.argsort(conf, kind="stable")
    bins = np.array_split(order, min(num_bins, conf.size))
    return float(sum(len(b) / conf.size * abs(hit[b].mean() - conf[b].mean()) for b in bins if len(b)))
