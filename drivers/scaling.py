"""The rectified scaling-law forecast of validation error against synthetic data (pure, scipy).

Law (SynthLLM, "Scaling Laws of Synthetic Data for Language Models", arXiv 2503.19551, Sec. 3, the
rectified scaling law; Fixed-Source Synthesis, arXiv 2607.01727):

    err(D) = B / (D_l + D^beta) + E

D is the synthetic data spent (kept samples or teacher tokens), D_l the "pre-learned data size" that
lets the law hold at D = 0 (the untrained student), beta the decay exponent and E the irreducible
error. The fit minimises squared residuals of log err (scaling-law fits are judged on relative error,
and a log residual keeps the many small-D points from dominating) with scipy's bounded trust-region
least squares from several starts; the forecast interval comes from a residual bootstrap (Efron &
Tibshirani 1993, Sec. 9.4: refit on predictions plus resampled log residuals). With few points
(n <= 4 for 4 parameters) the fit interpolates, its residuals are ~0 and the interval degenerates to
the point forecast: read the RMSE and the number of points before trusting it.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy.optimize import least_squares

_MIN_ERR = 1e-6  # errors are clipped here before the log (an error of exactly 0 has no log)


@dataclass(frozen=True)
class LawFit:
    """Fitted parameters of err(D) = B / (D_l + D^beta) + E, in the units of the D given to the fit;
    rmse: root mean squared error of the fit in error units (not log), over the n fitted points."""

    B: float
    D_l: float
    beta: float
    E: float
    rmse: float
    n: int

    def predict(self, d) -> np.ndarray:
        """err at D (shape (m,) or scalar, same unit as the fit's D)."""
        return rectified_law(np.asarray(d, dtype=float), self.B, self.D_l, self.beta, self.E)

    def as_dict(self) -> dict:
        return asdict(self)


def rectified_law(d, B: float, D_l: float, beta: float, E: float) -> np.ndarray:
    """B / (D_l + D^beta) + E for D >= 0 (shape of d)."""
    return B / (D_l + np.power(np.asarray(d, dtype=float), beta)) + E


def _model(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    log_b, log_dl, beta, e = x
    return np.exp(log_b) / (np.exp(log_dl) + np.power(d, beta)) + e


def _solve(d: np.ndarray, log_err: np.ndarray, starts: list[np.ndarray], bounds) -> Optional[np.ndarray]:
    best, best_cost = None, math.inf
    for x0 in starts:
        x0 = np.clip(x0, bounds[0] + 1e-9, bounds[1] - 1e-9)
        try:
            res = least_squares(lambda x: np.log(np.maximum(_model(x, d), _MIN_ERR)) - log_err, x0,
                                bounds=bounds, method="trf", x_scale="jac", max_nfev=2000)
        except (ValueError, FloatingPointError):
            continue
        if np.isfinite(res.cost) and res.cost < best_cost:
            best, best_cost = res.x, res.cost
    return best


def _starts(d: np.ndarray, err: np.ndarray) -> list[np.ndarray]:
    """A grid of starts: beta, E (fractions of the smallest error) and D_l (1e-3 or the median
    positive D, in scaled units), with B set so the law passes through the smallest-D point."""
    positive = d[d > 0]
    d_mid = float(np.median(positive)) if positive.size else 1.0
    d0, e0 = float(d[np.argmin(d)]), float(err[np.argmin(d)])
    out = []
    for beta in (0.3, 0.7, 1.2):
        for e_frac in (0.0, 0.5, 0.9):
            for d_l in (1e-3, d_mid):
                e = e_frac * float(err.min())
                b = max(e0 - e, 1e-6) * (d_l + d0**beta)
                out.append(np.array([math.log(b), math.log(d_l), beta, e]))
    return out


def fit_rectified_law(d, err) -> LawFit:
    """Least-squares fit of the law to points (D_i, err_i).

    d: shape (n,), D >= 0 (samples or tokens); err: shape (n,), errors in (0, 1] (1 - accuracy).
    Parameters are bounded: beta in [0.01, 3], E in [0, max err], B and D_l > 0. D is rescaled by
    its maximum inside the fit (conditioning) and the parameters scaled back.

    Raises:
        ValueError: shapes differ, fewer than 3 points, fewer than 2 distinct D, a negative D or a
            non-finite value, or no start converged.
    """
    d = np.asarray(d, dtype=float)
    err = np.asarray(err, dtype=float)
    if d.shape != err.shape or d.ndim != 1:
        raise ValueError(f"d shape {d.shape} and err shape {err.shape} must be equal and 1-D")
    if d.size < 3 or np.unique(d).size < 2:
        raise ValueError(f"the law needs >= 3 points with >= 2 distinct D, got {d.size} points")
    if not (np.all(np.isfinite(d)) and np.all(np.isfinite(err))) or d.min() < 0:
        raise ValueError("D must be finite and >= 0, errors finite")
    err = np.maximum(err, _MIN_ERR)
    scale = float(d.max())
    x = _fit_scaled(d / scale, err, None)
    if x is None:
        raise ValueError("the rectified law fit did not converge from any start")
    return _unscale(x, scale, d, err)


def _bounds(err: np.ndarray):
    return (np.array([-30.0, -30.0, 0.01, 0.0]), np.array([30.0, 30.0, 3.0, max(float(err.max()), 1e-6)]))


def _fit_scaled(d: np.ndarray, err: np.ndarray, start: Optional[np.ndarray]) -> Optional[np.ndarray]:
    starts = _starts(d, err) if start is None else [start, *_starts(d, err)[::6]]
    return _solve(d, np.log(err), starts, _bounds(err))


def _unscale(x: np.ndarray, scale: float, d: np.ndarray, err: np.ndarray) -> LawFit:
    log_b, log_dl, beta, e = (float(v) for v in x)
    s_beta = scale**beta
    fit = LawFit(B=math.exp(log_b) * s_beta, D_l=math.exp(log_dl) * s_beta, beta=beta, E=e, rmse=0.0, n=int(d.size))
    rmse = float(np.sqrt(np.mean((fit.predict(d) - err) ** 2)))
    return LawFit(fit.B, fit.D_l, fit.beta, fit.E, rmse, fit.n)


def bootstrap_forecast(d, err, fit: LawFit, d_target: float, replicates: int = 200, coverage: float = 0.9,
                       seed: int = 0) -> tuple[float, float]:
    """(low, high) central `coverage` interval of the forecast err(d_target) from a residual bootstrap:
    each replicate refits the law to fit.predict(d) * exp(resampled log residuals). d, err: as given
    to `fit_rectified_law`. Replicates whose refit fails are skipped; none left (or replicates = 0):
    (forecast, forecast)."""
    d = np.asarray(d, dtype=float)
    err = np.maximum(np.asarray(err, dtype=float), _MIN_ERR)
    point = float(fit.predict(d_target))
    if replicates <= 0:
        return point, point
    scale = float(d.max())
    pred = np.maximum(fit.predict(d), _MIN_ERR)
    resid = np.log(err) - np.log(pred)
    rng = np.random.default_rng(seed)
    s_beta = scale**fit.beta
    start = np.array([math.log(fit.B / s_beta), math.log(max(fit.D_l / s_beta, 1e-13)), fit.beta, fit.E])
    values = []
    for _ in range(replicates):
        sample = np.clip(pred * np.exp(rng.choice(resid, size=resid.size, replace=True)), _MIN_ERR, None)
        x = _solve(d / scale, np.log(sample), [start], _bounds(np.maximum(sample, err)))
        if x is not None:
            values.append(float(_model(x, np.array([d_target / scale]))[0]))
    if not values:
        return point, point
    tail = (1 - coverage) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def remaining_on_axis(axis: str, spent: dict[str, float], limits, d_now: float) -> Optional[float]:
    """How much more D (samples or teacher tokens) the remaining budget buys, or None if no limit.

    axis: "samples" or "tokens". spent: the ledger's metrics (budget/teacher_samples,
    budget/teacher_input_tokens, budget/teacher_output_tokens, budget/accelerator_seconds, budget/usd).
    limits: BudgetConfig. A limit on another quantity converts at the rate spent so far (e.g. tokens
    per kept sample); the tightest limit wins. A limit whose rate is unknown yet (nothing spent) is
    skipped.
    """
    samples = spent.get("budget/teacher_samples", 0.0)
    tin, tout = spent.get("budget/teacher_input_tokens", 0.0), spent.get("budget/teacher_output_tokens", 0.0)
    used = {
        "teacher_samples": samples,
        "teacher_input_tokens": tin,
        "teacher_output_tokens": tout,
        "accelerator_seconds": spent.get("budget/accelerator_seconds", 0.0),
        "usd": spent.get("budget/usd", 0.0),
    }
    lefts = []
    for name, amount in used.items():
        limit = getattr(limits, name)
        if limit is None:
            continue
        left = max(0.0, float(limit) - amount)
        if amount <= 0:
            if left == 0:
                lefts.append(0.0)
            continue
        lefts.append(left * d_now / amount)  # D per unit of this quantity, at the rate so far
    return min(lefts) if lefts else None
