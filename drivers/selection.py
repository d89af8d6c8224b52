"""Selection strategies (step 2-3 of Algorithm 1): score every seed, pick m.

Pure functions of the student's PREDICTIONS table; no Ray, no models. A strategy returns one score per
row, higher = selected first. Sources: Kessler et al. 2025, "Towards Active Synthetic Data Generation
for Finetuning Language Models", arXiv 2512.00884, Sec. 3 and Table 1.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from loopdistill.schemas import PREDICTIONS, SCORES, make_table, require_columns

ScoreFn = Callable[[pa.Table, np.random.Generator], np.ndarray]


def _random(predictions: pa.Table, rng: np.random.Generator) -> np.ndarray:
    """Uniform scores: static (non-adaptive) generation, the paper's baseline."""
    return rng.random(predictions.num_rows)


def _loss_high(predictions: pa.Table, rng: np.random.Generator) -> np.ndarray:
    """Mean NLL of the student's own greedy answer: the paper's best strategy, "loss (high)"."""
    return np.asarray(predictions.column("loss").to_numpy(zero_copy_only=False), dtype=float)


def _loss_low(predictions: pa.Table, rng: np.random.Generator) -> np.ndarray:
    """The easiest seeds first (the paper's "loss (low)" ablation)."""
    return -_loss_high(predictions, rng)


STRATEGIES: dict[str, ScoreFn] = {"random": _random, "loss_high": _loss_high, "loss_low": _loss_low}


def score(strategy: str, predictions: pa.Table, seed: int) -> pa.Table:
    """SCORES (id, score) for each PREDICTIONS row under `strategy`.

    Raises:
        ValueError: unknown strategy (valid names listed); a non-finite score (its id named).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; valid: {sorted(STRATEGIES)}")
    require_columns(predictions, PREDICTIONS, f"selection.score[{strategy}]")
    values = STRATEGIES[strategy](predictions, np.random.default_rng(seed))
    ids = predictions.column("id").to_pylist()
    bad = [i for i, v in zip(ids, values) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"strategy {strategy!r} gave non-finite scores for ids {bad[:5]}")
    return make_table(SCORES, [{"id": i, "score": float(v)} for i, v in zip(ids, values)])


def select(scores: np.ndarray, m: int, sampling: str = "argmax", temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """Indices of the m selected rows.

    scores: shape (n,). argmax: the m highest (ties broken by lower index, so results are stable).
    softmax: m draws without replacement with p_i proportional to exp(score_i / temperature), via the
    Gumbel-top-k trick (the paper's sampling ablation; argmax wins there).
    """
    scores = np.asarray(scores, dtype=float)
    m = min(m, scores.size)
    if sampling == "argmax":
        keys = scores
    elif sampling == "softmax":
        gumbel = np.random.default_rng(seed).gumbel(size=scores.size)
        keys = scores / temperature + gumbel
    else:
        raise ValueError(f"unknown sampling {sampling!r}; valid: ['argmax', 'softmax']")
    order = np.lexsort((np.arange(scores.size), -keys))  # by key descending, then index ascending
    return order[:m]
