"""Analysis of a study (drivers/study.py): learning curves with mean +- standard error over replicates,
the pairwise win-rate matrix and the data ratio of Kessler et al. 2025 (arXiv 2512.00884), a Markdown
report and figures. Pure functions over numbers, plus `load_curves` / `find_run_dir` (read the
children's run directories), `plot_*` (matplotlib) and `write_report` (writes report.md and figures).

Conventions:
- A child's curve has one point per finished iteration (x = kept synthetic pairs `synth/total`, or
  teacher tokens `budget/teacher_tokens`, both cumulative; y = `eval/test_accuracy` in [0, 1]) and,
  first, the untrained student's baseline at x = 0.
- Standard error = sample standard deviation (ddof 1) / sqrt(replicates); 0 for a single replicate.
- Strategies are compared at common sizes: each replicate's curve is interpolated linearly in x at the
  grid sizes, one per iteration: the smallest x any child reached at that iteration (so every child has
  data up to it: nothing is extrapolated).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

ACCURACY = "eval/test_accuracy"
AXES = {"samples": "synth/total", "tokens": "budget/teacher_tokens"}
AXIS_LABELS = {"samples": "kept synthetic pairs", "tokens": "teacher tokens (input + output)"}
REFERENCE = "random"  # the static-generation baseline the data ratio is measured against


@dataclass
class Curve:
    """One child run's learning curve. Arrays have shape (points,), points = 1 + iterations finished
    (the baseline first). samples: kept synthetic pairs; tokens: teacher input + output tokens;
    accuracy: test accuracy in [0, 1]."""

    strategy: str
    seed: int
    samples: np.ndarray
    tokens: np.ndarray
    accuracy: np.ndarray
    name: str = ""
    info: dict = field(default_factory=dict)  # stop reason, wall seconds, MLflow run id (for the tables)

    def x(self, axis: str) -> np.ndarray:
        return self.samples if axis == "samples" else self.tokens


def curve_from_history(strategy: str, seed: int, history: list[dict], baseline: dict, name: str = "", info: Optional[dict] = None) -> Curve:
    """A Curve from a run's per-iteration metrics (state.json `history`) and `baseline` (its eval/*
    figures before training; an empty dict leaves the baseline point out). Iterations that lack a
    test accuracy (a budget stop inside them) are skipped."""
    points = [(0.0, 0.0, float(baseline[ACCURACY]))] if ACCURACY in baseline else []
    for row in history:
        if ACCURACY in row and AXES["samples"] in row:
            points.append((float(row[AXES["samples"]]), float(row.get(AXES["tokens"], np.nan)), float(row[ACCURACY])))
    arr = np.array(points, dtype=float).reshape(-1, 3)
    return Curve(strategy, seed, arr[:, 0], arr[:, 1], arr[:, 2], name=name, info=dict(info or {}))


def mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error over axis 0. values: shape (replicates, points). SE = std(ddof=1) /
    sqrt(replicates), 0 when there is one replicate."""
    values = np.asarray(values, dtype=float)
    n = values.shape[0]
    mean = values.mean(axis=0)
    se = values.std(axis=0, ddof=1) / np.sqrt(n) if n > 1 else np.zeros_like(mean)
    return mean, se


def by_strategy(curves: list[Curve]) -> dict[str, list[Curve]]:
    """Curves grouped by strategy, random first, then in order of appearance."""
    groups: dict[str, list[Curve]] = {}
    for curve in sorted(curves, key=lambda c: (c.strategy != REFERENCE,)):
        groups.setdefault(curve.strategy, []).append(curve)
    return groups


def iteration_means(curves: list[Curve], axis: str) -> dict[str, np.ndarray]:
    """Per point index (baseline, iteration 0, 1, ...) over the replicates of one strategy: mean x,
    mean accuracy, its SE. Replicates that finished fewer iterations cut all to the shortest.
    Returns {"x", "mean", "se"}, each of shape (points,), and "n" (replicates)."""
    k = min(len(c.accuracy) for c in curves)
    xs = np.stack([c.x(axis)[:k] for c in curves])
    mean, se = mean_se(np.stack([c.accuracy[:k] for c in curves]))
    return {"x": xs.mean(axis=0), "mean": mean, "se": se, "n": len(curves)}


def common_grid(curves: list[Curve], axis: str) -> np.ndarray:
    """The sizes strategies are compared at, one per iteration that every child finished: the smallest
    x any child reached at that iteration. Each child's x at iteration t is >= it, so every curve has
    data at every size (nothing extrapolated); sizes below a child's first point fall between its
    baseline (x = 0) and that point. Shape (sizes,), non-decreasing; repeated sizes are dropped."""
    iters = [c.x(axis)[1:] if c.x(axis)[0] == 0 and len(c.x(axis)) > 1 else c.x(axis) for c in curves]
    k = min(len(x) for x in iters)
    if k == 0:
        return np.zeros(0)
    grid = np.stack([x[:k] for x in iters]).min(axis=0)
    lo = max(float(c.x(axis).min()) for c in curves)  # 0 with baselines; a curve without one starts later
    return np.unique(grid[grid >= lo - 1e-9])


def interpolate(curve: Curve, axis: str, grid: np.ndarray) -> np.ndarray:
    """The curve's accuracy at the grid sizes, linear in x. Where an iteration kept nothing new (equal
    x), the later point wins. Shape (sizes,)."""
    x, y = curve.x(axis), curve.accuracy
    keep = np.append(x[1:] != x[:-1], True)  # last of each run of equal x
    return np.interp(grid, x[keep], y[keep])


def stats_at(curves: list[Curve], axis: str, grid: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{strategy: (mean accuracy, SE)} at the grid sizes, over its replicates; arrays of shape (sizes,)."""
    return {s: mean_se(np.stack([interpolate(c, axis, grid) for c in group])) for s, group in by_strategy(curves).items()}


def win_matrix(stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    """Pairwise wins, Kessler et al. 2025 Sec. 5.4.2: strategy i beats j at size n when
    mean_i(n) - se_i(n) > mean_j(n) + se_j(n); W[i, j] counts the sizes where i beats j.

    stats: {strategy: (mean, se)}, arrays of the same shape (sizes,).
    Returns (names in the order of `stats`, W of shape (strategies, strategies), int; diagonal 0).
    """
    names = list(stats)
    wins = np.zeros((len(names), len(names)), dtype=int)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if i != j:
                (mean_a, se_a), (mean_b, se_b) = stats[a], stats[b]
                wins[i, j] = int(np.sum(np.asarray(mean_a) - np.asarray(se_a) > np.asarray(mean_b) + np.asarray(se_b)))
    return names, wins


def samples_to_reach(x: np.ndarray, accuracy: np.ndarray, target: float) -> Optional[float]:
    """The smallest x at which the piecewise-linear curve (x, accuracy) first reaches `target`
    (interpolated linearly between the two points around the first crossing); None when it never does.
    x: shape (points,), non-decreasing."""
    x, accuracy = np.asarray(x, dtype=float), np.asarray(accuracy, dtype=float)
    if len(x) == 0:
        return None
    if accuracy[0] >= target:
        return float(x[0])
    for k in range(1, len(x)):
        if accuracy[k] >= target:
            a0, a1, x0, x1 = accuracy[k - 1], accuracy[k], x[k - 1], x[k]
            return float(x0 + (target - a0) * (x1 - x0) / (a1 - a0))
    return None


@dataclass
class DataRatio:
    """How much data `best` needs for the accuracy `reference` ends with (Kessler et al. 2025: random
    needs 33-100% more data than loss (high) for the same accuracy).

    target: the reference's final mean accuracy; reference_x: x at which the reference's own mean curve
    first reaches target (its final mean x when the curve never dips below its end; measured the same
    way as best_x, so a reference that plateaus early is not charged for the data it kept after
    reaching its final accuracy); best_x: x at which best's mean curve first reaches target (None:
    never, within its range); ratio = best_x / reference_x (< 1: best needs less data);
    reference_needs_more = reference_x / best_x - 1 (0.5 = 50% more); reference_final_x: the
    reference's final mean x."""

    best: str
    reference: str
    axis: str
    target: float
    reference_x: float
    best_x: Optional[float]
    best_max_x: float
    reference_final_x: float = float("nan")

    @property
    def ratio(self) -> Optional[float]:
        return None if self.best_x is None or self.reference_x <= 0 else self.best_x / self.reference_x

    @property
    def reference_needs_more(self) -> Optional[float]:
        return None if not self.best_x else self.reference_x / self.best_x - 1


def data_ratio(best: str, best_mean: dict, reference: str, reference_mean: dict, axis: str = "samples") -> DataRatio:
    """The data ratio from two strategies' replicate-mean curves (`iteration_means` outputs: "x" the
    mean x per point, "mean" the mean accuracy per point). Both mean curves are interpolated linearly on
    the x axis between their points (the baseline at x = 0 first) to find where each first reaches the
    reference's final mean accuracy; the ratio is best's x over the reference's."""
    target = float(reference_mean["mean"][-1])
    reference_x = samples_to_reach(reference_mean["x"], reference_mean["mean"], target)  # its last point reaches it
    best_x = samples_to_reach(best_mean["x"], best_mean["mean"], target)
    return DataRatio(best, reference, axis, target, float(reference_x), best_x, float(best_mean["x"][-1]),
                     float(reference_mean["x"][-1]))


def best_strategy(names: list[str], wins: np.ndarray, final_accuracy: dict[str, float]) -> Optional[str]:
    """The strategy other than random with the most wins (row sum of the matrix); ties go to the
    higher `final_accuracy`, which must be measured at one size for all strategies (`analyse` passes
    the mean accuracy at the largest compared size: a strategy whose replicates stopped early is not
    compared at an earlier iteration than the others). None when random is the only strategy."""
    candidates = [n for n in names if n != REFERENCE]
    if not candidates:
        return None
    return max(candidates, key=lambda n: (int(wins[names.index(n)].sum()), final_accuracy.get(n, 0.0)))


# --- loading ----------------------------------------------------------------------------------------
def load_curves(study_dir: Path, children: dict[str, dict]) -> list[Curve]:
    """One Curve per child with a run directory under `study_dir/runs/<name>/` (finished or not: a
    partial curve is reported as such). children: {name: {"strategy", "seed"}} from study.json."""
    curves = []
    for name, child in children.items():
        run_dir = find_run_dir(study_dir, name)
        if run_dir is None:
            continue
        state = json.loads((run_dir / "state.json").read_text())
        info = {"stop_reason": state.get("stop_reason", ""), "mlflow_run_id": state.get("mlflow_run_id", ""),
                "iterations": state.get("iteration", 0), "run_dir": str(run_dir)}
        record = study_dir / "runs" / name / "child.json"
        if record.is_file():
            attempts = json.loads(record.read_text()).get("attempts", [])
            info["wall_s"] = sum(a.get("wall_s", 0.0) for a in attempts)
            # An attempt killed with its worker recorded its start but no end: the sum is a lower bound.
            info["wall_lower_bound"] = any("wall_s" not in a for a in attempts)
        curve = curve_from_history(child["strategy"], int(child["seed"]), state.get("history", []), state.get("baseline", {}), name, info)
        if len(curve.accuracy) and curve.samples[-1] > 0:  # at least one evaluated iteration
            curves.append(curve)
    return curves


def find_run_dir(study_dir: Path, name: str) -> Optional[Path]:
    """The child's run directory (`runs/<name>/<name>-<UTC time>` with a state.json); the latest when
    an earlier attempt died before its first state was written and left another."""
    found = sorted(p.parent for p in (study_dir / "runs" / name).glob(f"{name}-*/state.json"))
    return found[-1] if found else None


# --- report ------------------------------------------------------------------------------------------
def _fmt_x(value: float) -> str:
    return f"{value:,.0f}"


def analyse(curves: list[Curve]) -> dict:
    """Everything the report shows, per axis: per-strategy iteration means, the grid, stats at the
    grid, the win matrix, and the data ratio of the best strategy against random."""
    out = {}
    groups = by_strategy(curves)
    for axis in AXES:
        means = {s: iteration_means(group, axis) for s, group in groups.items()}
        grid = common_grid(curves, axis)
        stats = stats_at(curves, axis, grid) if len(grid) else {s: (np.zeros(0), np.zeros(0)) for s in groups}
        names, wins = win_matrix(stats)
        # Ties on wins are broken at the largest size every child reached, the same x for all strategies.
        final = {s: float(stats[s][0][-1]) if len(grid) else float("-inf") for s in names}
        best = best_strategy(names, wins, final)
        ratio = data_ratio(best, means[best], REFERENCE, means[REFERENCE], axis) if best and REFERENCE in means else None
        # A ratio read off two mean curves is evidence only where the win matrix separates them.
        beats = int(wins[names.index(best), names.index(REFERENCE)]) if ratio is not None else 0
        out[axis] = {"means": means, "grid": grid, "stats": stats, "names": names, "wins": wins, "best": best,
                     "ratio": ratio, "best_beats_reference": beats,
                     "best_wins": int(wins[names.index(best)].sum()) if best else 0}
    return out


def ratio_sentence(r: Optional[DataRatio], best_wins: Optional[int] = None) -> str:
    """One line saying the data ratio in words (or why there is none). best_wins: the best strategy's
    row sum in the win matrix (0 says it was chosen on accuracy alone)."""
    if r is None:
        return "No data ratio: the study needs `random` and at least one other strategy."
    unit = AXIS_LABELS[r.axis]
    why = ("most wins" if best_wins is None else f"most wins, {best_wins}" if best_wins > 0
           else "no wins; highest mean accuracy at the largest compared size")
    final_x = r.reference_final_x if r.reference_final_x == r.reference_final_x else r.reference_x  # nan: not recorded
    if final_x <= 0:
        return f"No data ratio: `{r.reference}` has no {unit} yet."
    if r.reference_x <= 0:
        return f"No data ratio: `{r.reference}` ends no higher ({r.target:.3f}) than its untrained student."
    head = f"`{r.reference}` ends at test accuracy {r.target:.3f} with {_fmt_x(final_x)} {unit} (replicate means)"
    head += (f" and first reaches it at {_fmt_x(r.reference_x)}. " if r.reference_x < final_x - 1e-9 else ". ")
    if r.best_x is None:
        return head + (f"`{r.best}` ({why}) never reaches it within its {_fmt_x(r.best_max_x)} {unit}: "
                       f"no data ratio in its favour (ratio > {r.best_max_x / max(r.reference_x, 1e-9):.2f}).")
    more = r.reference_needs_more
    if more is None:  # best reaches the target with no data at all: its baseline is already there
        return head + f"`{r.best}` ({why}) starts at or above it before any training: no meaningful data ratio."
    more_text = (f"`{r.reference}` needs {more:.0%} more data for the same accuracy" if more >= 0
                 else f"`{r.best}` needs {r.ratio - 1:.0%} more data than `{r.reference}` for the same accuracy")
    return head + (f"`{r.best}` ({why}) first reaches it at {_fmt_x(r.best_x)} {unit}: data ratio "
                   f"{r.best_x:,.0f} / {r.reference_x:,.0f} = **{r.ratio:.2f}** ({more_text}).")


def render_markdown(name: str, curves: list[Curve], analysis: dict, expected: int, figures: list[str]) -> str:
    """report.md: children, per-strategy curves (mean +- SE), win matrices, data ratios, figures."""
    lines = [f"# Study `{name}`", ""]
    groups = by_strategy(curves)
    finished = sum(1 for c in curves if c.info.get("stop_reason"))
    lines += [f"{len(curves)} of {expected} child runs have data, {finished} finished. Replicates per strategy: "
              + ", ".join(f"{s} {len(g)}" for s, g in groups.items()) + ".", ""]
    lines += ["## Child runs", "", "wall s: the child's attempts summed (N+: an attempt was killed before it recorded its end).", "",
              "| run | strategy | seed | iterations | stop | kept pairs | teacher tokens | test acc | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for c in sorted(curves, key=lambda c: (c.strategy, c.seed)):
        wall = c.info.get("wall_s")
        lines.append(f"| {c.name} | {c.strategy} | {c.seed} | {len(c.accuracy) - 1} | {c.info.get('stop_reason') or 'unfinished'} | "
                     f"{_fmt_x(c.samples[-1])} | {_fmt_x(c.tokens[-1])} | {c.accuracy[-1]:.3f} | {'-' if wall is None else f'{wall:.0f}' + ('+' if c.info.get('wall_lower_bound') else '')} |")
    lines += ["", "## Learning curves (test accuracy, mean +- SE over replicates)", "",
              "Point 0 is the untrained student; point t + 1 follows iteration t. x is the replicate mean.", ""]
    for strategy in groups:
        m_s, m_t = analysis["samples"]["means"][strategy], analysis["tokens"]["means"][strategy]
        lines += [f"**{strategy}** (n = {m_s['n']})", "", "| point | kept pairs | teacher tokens | test acc | SE |", "|---|---|---|---|---|"]
        for k in range(len(m_s["x"])):
            lines.append(f"| {k} | {_fmt_x(m_s['x'][k])} | {_fmt_x(m_t['x'][k])} | {m_s['mean'][k]:.3f} | {m_s['se'][k]:.3f} |")
        lines.append("")
    for axis in AXES:
        a = analysis[axis]
        lines += [f"## Win matrix on {AXIS_LABELS[axis]} (Kessler et al. 2025 Sec. 5.4.2)", "",
                  f"Row i, column j: at how many of the {len(a['grid'])} sizes ({', '.join(_fmt_x(g) for g in a['grid'])}) "
                  "strategy i beats j, i.e. mean_i - se_i > mean_j + se_j (each replicate interpolated linearly at the size).", ""]
        names, wins = a["names"], a["wins"]
        lines += ["| beats -> | " + " | ".join(names) + " | total |", "|---" * (len(names) + 2) + "|"]
        for i, n in enumerate(names):
            lines.append(f"| **{n}** | " + " | ".join("-" if i == j else str(wins[i, j]) for j in range(len(names))) + f" | {wins[i].sum()} |")
        lines += ["", "Data ratio: " + ratio_sentence(a["ratio"], a.get("best_wins")), ""]
        if a["ratio"] is not None and not a["best_beats_reference"]:
            lines += [f"**No evidence**: `{a['best']}` beats `{REFERENCE}` at none of the compared sizes "
                      "(mean - SE > mean + SE), so this ratio is within the replicate noise.", ""]
    lines += ["How the data ratio is computed: per strategy, the replicate-mean curve (mean x and mean test accuracy at each "
              "point, baseline at 0 first) is interpolated linearly along x; the x where the best strategy's curve first reaches "
              "random's final mean accuracy is divided by the x where random's own curve first reaches it (its final x unless "
              "it was there earlier). The best strategy is the one with the most wins in the matrix, ties broken by the mean "
              "accuracy at the largest compared size. A ratio below 1 favours the best strategy; "
              "the paper reports random needing 33-100% more data (ratio 0.5-0.75).", ""]
    if figures:
        lines += ["## Figures", ""] + [f"![{Path(f).stem}]({f})" for f in figures] + [""]
    return "\n".join(lines)


def plot_curves(curves: list[Curve], analysis: dict, path: Path) -> Path:
    """Two panels: test accuracy vs kept pairs and vs teacher tokens, mean +- SE per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, axis in zip(axes, AXES):
        for strategy, m in analysis[axis]["means"].items():
            line = ax.plot(m["x"], m["mean"], marker="o", label=f"{strategy} (n={m['n']})")[0]
            ax.fill_between(m["x"], m["mean"] - m["se"], m["mean"] + m["se"], color=line.get_color(), alpha=0.2)
        ax.set_xlabel(AXIS_LABELS[axis])
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_win_matrix(analysis: dict, path: Path, axis: str = "samples") -> Path:
    """Heat map of the win matrix on `axis` (counts in the cells)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, wins = analysis[axis]["names"], analysis[axis]["wins"]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.0 * len(names) + 1.5))
    ax.imshow(wins, cmap="Greens", vmin=0, vmax=max(1, len(analysis[axis]["grid"])))
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "-" if i == j else str(wins[i, j]), ha="center", va="center")
    ax.set_title(f"row beats column ({len(analysis[axis]['grid'])} sizes, {axis})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(study_dir: Path, name: str, children: dict[str, dict]) -> tuple[Path, list[Path]]:
    """Write report.md and figures/*.png into `study_dir` from the children's run directories.
    Returns (report path, figure paths). Figures are skipped (and the report says so) without
    matplotlib. Raises ValueError when no child has a curve yet."""
    curves = load_curves(study_dir, children)
    if not curves:
        raise ValueError(f"{study_dir}: no child run has finished an evaluation yet")
    analysis = analyse(curves)
    figures: list[Path] = []
    try:
        (study_dir / "figures").mkdir(exist_ok=True)
        figures.append(plot_curves(curves, analysis, study_dir / "figures" / "learning_curves.png"))
        for axis in AXES:
            figures.append(plot_win_matrix(analysis, study_dir / "figures" / f"win_matrix_{axis}.png", axis))
    except ImportError:
        pass
    text = render_markdown(name, curves, analysis, len(children), [str(f.relative_to(study_dir)) for f in figures])
    if not figures:
        text += "\n(matplotlib is not installed here: no figures; rerun `loopdistill study-report` where it is.)\n"
    report = study_dir / "report.md"
    report.write_text(text)
    return report, figures
