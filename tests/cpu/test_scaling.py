"""The rectified scaling-law fit recovers known parameters from noisy curves drawn from the law, and
the forecast's target comes from the remaining budget."""
import numpy as np
import pytest

from drivers.scaling import bootstrap_forecast, fit_rectified_law, rectified_law, remaining_on_axis
from loopdistill.config import BudgetConfig

TRUE = [  # (B, D_l, beta, E): a samples-like and a tokens-like axis
    (30.0, 50.0, 0.5, 0.20, np.logspace(1, 5, 25)),
    (4.0e3, 2.0e3, 0.8, 0.05, np.logspace(3, 7, 25)),
]


@pytest.mark.parametrize("case", range(len(TRUE)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_recovers_known_parameters(case, seed):
    B, D_l, beta, E, d = TRUE[case]
    rng = np.random.default_rng(seed)
    clean = rectified_law(d, B, D_l, beta, E)
    err = clean + rng.normal(0, 0.002, d.size)  # 0.2 points of error noise
    fit = fit_rectified_law(d, err)
    assert fit.beta == pytest.approx(beta, rel=0.10)
    assert fit.E == pytest.approx(E, abs=0.01)
    assert fit.rmse < 0.004 and fit.n == d.size
    far = d.max() * 10  # beyond the data: the forecast the loop makes
    assert float(fit.predict(far)) == pytest.approx(float(rectified_law(far, B, D_l, beta, E)), abs=0.01)


def test_bootstrap_interval_covers_the_truth_and_shrinks_with_noise():
    B, D_l, beta, E, d = TRUE[0]
    clean = rectified_law(d, B, D_l, beta, E)
    widths = []
    for noise in (0.01, 0.002):
        err = clean + np.random.default_rng(5).normal(0, noise, d.size)
        fit = fit_rectified_law(d, err)
        low, high = bootstrap_forecast(d, err, fit, 1e6, replicates=100, coverage=0.9, seed=0)
        assert low <= float(fit.predict(1e6)) <= high
        assert low - 0.01 <= float(rectified_law(1e6, B, D_l, beta, E)) <= high + 0.01
        widths.append(high - low)
    assert widths[1] < widths[0]


def test_three_points_fit_through_the_baseline():
    """The loop's first fit: the untrained student at D = 0 and two iterations."""
    d, err = np.array([0.0, 384.0, 768.0]), np.array([1.0, 0.97, 0.95])
    fit = fit_rectified_law(d, err)
    assert np.allclose(fit.predict(d), err, atol=1e-3)
    assert float(fit.predict(1536.0)) <= 0.95 + 1e-6


def test_bad_points_are_refused():
    with pytest.raises(ValueError, match="3 points"):
        fit_rectified_law([1.0, 2.0], [0.5, 0.4])
    with pytest.raises(ValueError, match="distinct"):
        fit_rectified_law([1.0, 1.0, 1.0], [0.5, 0.4, 0.3])
    with pytest.raises(ValueError, match=">= 0"):
        fit_rectified_law([-1.0, 1.0, 2.0], [0.5, 0.4, 0.3])


def test_remaining_budget_on_each_axis():
    spent = {"budget/teacher_samples": 100, "budget/teacher_input_tokens": 30_000, "budget/teacher_output_tokens": 10_000,
             "budget/accelerator_seconds": 50.0, "budget/usd": 0.0}
    assert remaining_on_axis("samples", spent, BudgetConfig(), 100) is None
    assert remaining_on_axis("samples", spent, BudgetConfig(teacher_samples=250), 100) == 150
    # 400 tokens per sample so far: 20k output tokens left at 100 output tokens/sample = 200 samples
    assert remaining_on_axis("samples", spent, BudgetConfig(teacher_output_tokens=30_000), 100) == pytest.approx(200)
    # tokens axis, the tightest of two limits wins: input 60k (30k left -> 40k tokens), samples 120 (20 -> 8k tokens)
    limits = BudgetConfig(teacher_input_tokens=60_000, teacher_samples=120)
    assert remaining_on_axis("tokens", spent, limits, 40_000) == pytest.approx(8_000)


def test_forecast_figure_takes_a_band_that_misses_the_point():
    """A percentile bootstrap band need not contain the point forecast (or equals it up to rounding with
    3 points); the figure must still draw instead of failing the iteration."""
    from drivers.plots import forecast_figure

    d, err = np.array([0.0, 384.0, 768.0]), np.array([1.0, 0.97, 0.95])
    fit = fit_rectified_law(d, err)
    point = float(fit.predict(1536.0))
    for band in ((point + 1e-12, point + 0.01), (point - 0.02, point - 1e-9), (point, point)):
        fig = forecast_figure(d, err, fit, 1536.0, band, "kept synthetic samples")
        assert "forecast" in fig.axes[0].get_legend_handles_labels()[1][-1]


def test_budget_figure_shows_a_zero_limit_as_exhausted():
    from drivers.plots import budget_figure

    fig = budget_figure({"teacher_samples": 0.0, "usd": 1.5}, {"teacher_samples": 0, "usd": None})
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [1.0]  # one bar: the zero limit, exhausted
    assert "usd 1.5" in ax.get_title() and "teacher_samples" not in ax.get_title()
