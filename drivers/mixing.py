"""The training set's mix of synthetic and real seed rows (trainer.synthetic_fraction).

arXiv 2510.05133 finds iterated self-training stable when synthetic data stay at or below 20-30% of the
mix; the calibration gate's reduce_synthetic_ratio action lowers the fraction this module applies.
Pure functions, no Ray.
"""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopdistill.config import ConfigError


def seeds_needed(num_synthetic: int, fraction: float) -> int:
    """Real rows k to add to `num_synthetic` synthetic rows so that synthetic / total = fraction.

    k = ceil(n (1 - f) / f - 1e-9): exact whenever n (1 - f) / f is an integer; otherwise rounded up,
    so the achieved fraction n / (n + k) is never above f and below it by less than 1 / (n + k).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"synthetic fraction must be in (0, 1], got {fraction}")
    return max(0, math.ceil(num_synthetic * (1 - fraction) / fraction - 1e-9))


def lowest_fraction(num_synthetic: int, num_seeds: int) -> float:
    """The smallest synthetic fraction a seed pool of `num_seeds` rows can give (all seeds added)."""
    total = num_synthetic + num_seeds
    return num_synthetic / total if total else 1.0


def excluded_rows_removed(synthetic: pa.Table, excluded_iterations: list[int]) -> pa.Table:
    """SYNTHETIC rows minus those of the excluded (rolled-back) iterations."""
    if not excluded_iterations or synthetic.num_rows == 0:
        return synthetic
    keep = pc.invert(pc.is_in(synthetic.column("iteration"), value_set=pa.array(excluded_iterations, pa.int64())))
    return synthetic.filter(keep)


def sample_seeds(seeds: pa.Table, num_synthetic: int, fraction: float, seed: int) -> pa.Table:
    """The real seed rows to train beside `num_synthetic` synthetic rows at `fraction`.

    seeds: SEEDS rows (the pool D0). Rows are the first k of one permutation drawn with `seed`, so a
    lower fraction (larger k) keeps every row a higher one chose.

    Raises:
        loopdistill.config.ConfigError: naming trainer.synthetic_fraction, when the pool has fewer
            than k rows.
    """
    k = seeds_needed(num_synthetic, fraction)
    if k > seeds.num_rows:
        raise ConfigError(
            f"trainer.synthetic_fraction: {fraction:.4g} needs {k} real seed rows beside {num_synthetic} synthetic "
            f"rows, the seed pool (task.num_seeds) has {seeds.num_rows}; the lowest fraction it allows is "
            f"{lowest_fraction(num_synthetic, seeds.num_rows):.4g}"
        )
    order = np.random.default_rng(seed).permutation(seeds.num_rows)[:k]
    return seeds.take(pa.array(np.sort(order), pa.int64()))
