"""Steps 2-3 of Algorithm 1: score every seed with a strategy and choose m of them.

Strategies live in drivers/strategies.py (one registry, each with its source); this module runs one on
the gathered Signals. Sources: Kessler et al. 2025, arXiv 2512.00884, Sec. 3 (strategies) and the
sampling ablation (argmax vs softmax over scores).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from drivers.signals import Signals
from drivers.strategies import STRATEGIES, Strategy
from loopdistill.schemas import SCORES, make_table

SAMPLINGS = ("argmax", "softmax")


def get_strategy(name: str) -> Strategy:
    """The registered strategy. Raises ValueError for an unknown name (valid names listed)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; valid: {sorted(STRATEGIES)}")
    return STRATEGIES[name]


def score(strategy: str, signals: Signals, seed: int) -> pa.Table:
    """SCORES (id, score), one row per seed, under `strategy` (higher = harder).

    Raises:
        ValueError: unknown strategy; a needed signal missing or non-finite (seed id named).
    """
    values = np.asarray(get_strategy(strategy).score(signals, np.random.default_rng(seed)), dtype=float)
    bad = [i for i, v in zip(signals.ids, values) if not np.isfinite(v)]
    if bad:
        raise ValueError(f"strategy {strategy!r} gave non-finite scores for ids {bad[:5]}")
    return make_table(SCORES, [{"id": i, "score": float(v)} for i, v in zip(signals.ids, values)])


def choose(
    strategy: str, signals: Signals, m: int, sampling: str = "argmax", temperature: float = 1.0, seed: int = 0
) -> tuple[pa.Table, np.ndarray]:
    """(SCORES of every seed, indices of the m chosen seeds) under `strategy`.

    Set strategies (random, incorrect, evokd, lion, badge) pick with their own rule from an RNG seeded
    by `seed`; score strategies take the top m (argmax) or sample (softmax) by `select`.

    Raises:
        ValueError: unknown strategy or sampling; softmax asked of a set strategy; a signal missing.
    """
    strat = get_strategy(strategy)
    scores = score(strategy, signals, seed)
    if strat.score_based:
        idx = select(scores.column("score").to_numpy(), m, sampling, temperature, seed)
    elif sampling != "argmax":
        raise ValueError(f"strategy {strategy!r} picks a set by its own rule; sampling {sampling!r} does not apply")
    else:
        idx = strat.pick(signals, min(m, len(signals.ids)), np.random.default_rng(seed))
    return scores, np.asarray(idx, dtype=np.int64)


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
        raise ValueError(f"unknown sampling {sampling!r}; valid: {list(SAMPLINGS)}")
    order = np.lexsort((np.arange(scores.size), -keys))  # by key descending, then index ascending
    return order[:m]
