"""Figures logged to MLflow every iteration (matplotlib, Agg backend: no display needed).

Each function takes plain numbers and returns a matplotlib Figure; the driver logs it with
Tracker.log_figure, which closes it.
"""
from __future__ import annotations

from typing import Optional

import matplotlib

matplotlib.use("Agg")  # headless: the driver runs on clusters without a display
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from drivers.scaling import LawFit  # noqa: E402


def learning_curves(history: list[dict]) -> plt.Figure:
    """Validation and test accuracy against cumulative kept synthetic samples and teacher tokens.

    history: one metrics dict per finished iteration (keys eval/val_accuracy, eval/test_accuracy,
    budget/teacher_samples, budget/teacher_tokens); a first entry may be the baseline (at 0, 0)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "budget/teacher_samples", "kept synthetic samples"),
                           (axes[1], "budget/teacher_tokens", "teacher tokens (input + output)")):
        x = [h.get(key, 0.0) for h in history]
        for split in ("val", "test"):
            y = [h.get(f"eval/{split}_accuracy", np.nan) for h in history]
            ax.plot(x, y, marker="o", label=split)
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("accuracy vs synthetic data")
    fig.tight_layout()
    return fig


def reliability_diagram(curve: dict[str, np.ndarray], ece: float, title: str) -> plt.Figure:
    """Accuracy against mean confidence per equal-count bin (drivers.calibration.reliability_curve),
    with the diagonal of perfect calibration; marker size grows with the bin's answer count."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    if len(curve["count"]):
        sizes = 20 + 80 * curve["count"] / curve["count"].max()
        ax.plot(curve["confidence"], curve["accuracy"], color="C0", linewidth=1)
        ax.scatter(curve["confidence"], curve["accuracy"], s=sizes, color="C0", zorder=3,
                   label=f"{len(curve['count'])} equal-count bins")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (final-answer tokens' probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {ece:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return fig


def forecast_figure(d: np.ndarray, err: np.ndarray, fit: LawFit, d_target: float, band: tuple[float, float],
                    axis_label: str) -> plt.Figure:
    """The fitted law through the (D, validation error) points, extended to d_target, with the
    bootstrap interval of the forecast at d_target."""
    fig, ax = plt.subplots(figsize=(6, 4))
    grid = np.linspace(0.0, max(float(np.max(d)), d_target) * 1.05, 200)
    ax.scatter(d, err, color="C0", zorder=3, label="validation error")
    ax.plot(grid, fit.predict(grid), color="C1", label=f"B/(D_l+D^{fit.beta:.2f})+{fit.E:.3f}, RMSE {fit.rmse:.3f}")
    forecast = float(fit.predict(d_target))
    # A percentile bootstrap interval need not contain the point forecast (and with n <= 4 points it
    # is the point up to rounding); matplotlib refuses negative error-bar lengths, so clip them at 0.
    below, above = max(forecast - band[0], 0.0), max(band[1] - forecast, 0.0)
    ax.errorbar([d_target], [forecast], yerr=[[below], [above]], fmt="s", color="C3",
                capsize=4, label=f"forecast {forecast:.3f} [{band[0]:.3f}, {band[1]:.3f}]")
    ax.set_xlabel(axis_label)
    ax.set_ylabel("validation error")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def budget_figure(spent: dict[str, float], limits: dict[str, Optional[float]]) -> plt.Figure:
    """Spent against limit per budget quantity: a bar of spent / limit (1.0 = exhausted) where a limit
    is set (a limit of 0 is exhausted from the start); quantities without a limit (None) are listed
    with their spend in the title row."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    limited = [(name, spent.get(name, 0.0), limit) for name, limit in limits.items() if limit is not None]
    if limited:
        names = [n for n, _, _ in limited]
        ratios = [s / lim if lim > 0 else 1.0 for _, s, lim in limited]
        ax.barh(names, ratios, color="C0")
        for i, ((_, s, lim), ratio) in enumerate(zip(limited, ratios)):
            ax.text(min(ratio, 1.0), i, f" {s:.4g} / {lim:.4g}", va="center", fontsize=8)
    ax.axvline(1.0, color="C3", linestyle="--")
    ax.set_xlim(0, 1.3)
    ax.set_xlabel("spent / limit")
    free = ", ".join(f"{n} {spent.get(n, 0.0):.4g}" for n, lim in limits.items() if lim is None)
    ax.set_title(f"budget (no limit: {free})" if free else "budget", fontsize=8)
    fig.tight_layout()
    return fig
