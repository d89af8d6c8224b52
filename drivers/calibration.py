"""Calibration error of the student's answers (the calibration gate's input).

What "confidence" is: actors/student.py computes, for each greedy answer, exp(sum of the log-probs of
the generated tokens that overlap the final answer's character span) — the joint probability the
student assigned to its final-answer tokens, given the reasoning it wrote before them. The span comes
from the task (`Task.answer_span`: e.g. the expression after the last "Answer:" in Game of 24, the
number after "####" in GSM8K). A token that straddles the span's edge (a leading space merged into
the first answer token) counts whole. An answer with no extractable final answer has confidence 0.0
(and is wrong): it adds no gap |correct - confidence| of its own, but it counts in n, so a student
that rarely writes a parseable answer gets an ECE near 0 (the gate skips iteration 0 for this reason).

Source: adaptive (equal-count) binning ECE, Nixon et al. 2019, "Measuring Calibration in Deep
Learning" (Sec. 4); used as an early signal of self-training collapse in arXiv 2510.05133.
"""
from __future__ import annotations

import numpy as np


def _checked(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=float)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence shape {conf.shape} != correct shape {hit.shape}")
    if conf.size and (not np.all(np.isfinite(conf)) or conf.min() < 0 or conf.max() > 1):
        raise ValueError("confidences must be finite probabilities in [0, 1]")
    return conf, hit


def equal_count_bins(confidence, num_bins: int = 10, min_per_bin: int = 10) -> list[np.ndarray]:
    """Indices of the answers in each equal-count bin, bins in order of rising confidence.

    confidence: shape (n,). Uses k = min(num_bins, n // min_per_bin) bins (at least 1 when n > 0),
    so every bin holds at least `min_per_bin` answers when n >= min_per_bin; bin sizes differ by at
    most one (numpy.array_split of the confidence order, ties broken by position). n = 0: no bins.
    """
    conf = np.asarray(confidence, dtype=float)
    if conf.size == 0:
        return []
    k = max(1, min(num_bins, conf.size // max(1, min_per_bin)))
    return np.array_split(np.argsort(conf, kind="stable"), k)


def expected_calibration_error(confidence, correct, num_bins: int = 10, min_per_bin: int = 10) -> float:
    """ECE with equal-count bins of at least `min_per_bin` answers (see `equal_count_bins`).

    confidence: shape (n,), probabilities in [0, 1] (the final-answer tokens' probability, see the
    module docstring); correct: shape (n,), bools. Returns sum_b (|b|/n) * |mean(correct_b) -
    mean(confidence_b)|, in [0, 1]; 0.0 for n = 0. With n < 2 * min_per_bin this is one bin:
    |accuracy - mean confidence|.

    Raises:
        ValueError: shapes differ or a confidence is outside [0, 1] or not finite.
    """
    conf, hit = _checked(confidence, correct)
    if conf.size == 0:
        return 0.0
    bins = equal_count_bins(conf, num_bins, min_per_bin)
    return float(sum(len(b) / conf.size * abs(hit[b].mean() - conf[b].mean()) for b in bins))


def reliability_curve(confidence, correct, num_bins: int = 10, min_per_bin: int = 10) -> dict[str, np.ndarray]:
    """Per equal-count bin (the ECE's bins): mean confidence, accuracy and answer count, each shape
    (k,), for the reliability diagram. Raises ValueError as `expected_calibration_error`."""
    conf, hit = _checked(confidence, correct)
    bins = equal_count_bins(conf, num_bins, min_per_bin)
    return {
        "confidence": np.array([conf[b].mean() for b in bins]),
        "accuracy": np.array([hit[b].mean() for b in bins]),
        "count": np.array([len(b) for b in bins], dtype=int),
    }
