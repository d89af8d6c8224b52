"""The study: the paper's win-rate matrix and data ratio on constructed curves with known answers, and
the runner with two tiny child runs on local Ray (concurrent, nested under one MLflow parent run),
including a resume that skips the finished child and resumes the interrupted one."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from drivers.study import StudyIncomplete, run_study, runs_that_fit
from drivers.study_report import (
    Curve, analyse, common_grid, curve_from_history, data_ratio, interpolate, iteration_means, mean_se,
    samples_to_reach, win_matrix,
)
from loop_helpers import tiny_config


# --- analysis on constructed curves -----------------------------------------------------------------
def test_win_matrix_counts_sizes_where_the_se_bands_separate():
    # Three sizes. a: clearly above b at sizes 0 and 2; at size 1 the bands touch (0.5-0.05 = 0.45 =
    # 0.4+0.05: not strictly greater), so no win there. c equals b but with no spread: b and c never
    # separate except at size 2, where c's mean 0.1 + 0 < b's 0.4 - 0.05.
    stats = {
        "a": (np.array([0.6, 0.5, 0.9]), np.array([0.05, 0.05, 0.05])),
        "b": (np.array([0.4, 0.4, 0.4]), np.array([0.05, 0.05, 0.05])),
        "c": (np.array([0.4, 0.4, 0.1]), np.array([0.0, 0.0, 0.0])),
    }
    names, wins = win_matrix(stats)
    assert names == ["a", "b", "c"]
    assert wins.tolist() == [[0, 2, 3], [0, 0, 1], [0, 0, 0]]


def test_mean_se_is_sample_std_over_sqrt_n():
    mean, se = mean_se(np.array([[0.1, 0.0], [0.3, 0.0], [0.5, 0.3]]))
    assert np.allclose(mean, [0.3, 0.1])
    assert np.allclose(se, [0.2 / np.sqrt(3), np.std([0, 0, 0.3], ddof=1) / np.sqrt(3)])
    assert mean_se(np.array([[0.4, 0.5]]))[1].tolist() == [0.0, 0.0]  # one replicate: no spread


def _curve(strategy, seed, samples, accuracy):
    return Curve(strategy, seed, np.array(samples, float), np.array(samples, float) * 100, np.array(accuracy, float))


def test_data_ratio_on_known_curves():
    # random ends at 0.30 with 3,000 samples. best: 0.0 at 0, 0.2 at 1,000, 0.4 at 2,000 -> reaches 0.30
    # half way between 1,000 and 2,000 = 1,500: ratio 0.5, random needs +100% data.
    random_mean = iteration_means([_curve("random", 0, [0, 1000, 2000, 3000], [0.0, 0.1, 0.2, 0.3])], "samples")
    best_mean = iteration_means([_curve("loss_high", 0, [0, 1000, 2000, 3000], [0.0, 0.2, 0.4, 0.5])], "samples")
    r = data_ratio("loss_high", best_mean, "random", random_mean)
    assert r.target == pytest.approx(0.3) and r.reference_x == 3000
    assert r.best_x == pytest.approx(1500) and r.ratio == pytest.approx(0.5) and r.reference_needs_more == pytest.approx(1.0)
    # A strategy that never gets there: no ratio in its favour.
    worse = iteration_means([_curve("loss_low", 0, [0, 1000, 2000, 3000], [0.0, 0.05, 0.1, 0.2])], "samples")
    assert data_ratio("loss_low", worse, "random", random_mean).ratio is None
    assert samples_to_reach(np.array([0, 10]), np.array([0.5, 0.6]), 0.4) == 0.0


def test_data_ratio_measures_random_where_its_own_curve_first_reaches_its_final_accuracy():
    # random dips: 0.04 at 1,000, 0.03 at 2,000 and 3,000 (final 0.03, first reached at 750). best
    # reaches 0.03 at 1,500: it needs MORE data than random (ratio 2), not 1,500 / 3,000 = 0.5.
    random_mean = iteration_means([_curve("random", 0, [0, 1000, 2000, 3000], [0.0, 0.04, 0.03, 0.03])], "samples")
    best_mean = iteration_means([_curve("loss_high", 0, [0, 1000, 2000, 3000], [0.0, 0.02, 0.04, 0.05])], "samples")
    r = data_ratio("loss_high", best_mean, "random", random_mean)
    assert r.reference_x == pytest.approx(750) and r.reference_final_x == 3000
    assert r.best_x == pytest.approx(1500) and r.ratio == pytest.approx(2.0) and r.reference_needs_more == pytest.approx(-0.5)


def test_best_strategy_ties_are_broken_at_one_size_for_all_strategies():
    # No strategy beats another. loss_low's replicates stopped after iteration 0, where it was at 0.05;
    # loss_high ends its longer curve at 0.04 and is at 0.035 at the compared size 1,000 (loss_low
    # 0.05 there). Compared at the same size, loss_low is ahead; its curve's end must not be
    # compared with loss_high's later end.
    noise = [0.0, 0.02, -0.02]  # SE 0.012: every pair of bands overlaps
    randoms = [_curve("random", s, [0, 1000, 2000], [0, .04 + e, .04 + e]) for s, e in enumerate(noise)]
    highs = [_curve("loss_high", s, [0, 1000, 2000], [0, .035 + e, .06 + e]) for s, e in enumerate(noise)]
    lows = [_curve("loss_low", s, [0, 1000], [0, .05 + e]) for s, e in enumerate(noise)]
    a = analyse(randoms + highs + lows)["samples"]
    assert a["grid"].tolist() == [1000.0] and a["wins"].sum() == 0
    assert a["best"] == "loss_low" and a["best_wins"] == 0


def test_replicates_are_averaged_before_the_ratio_and_interpolated_on_a_common_grid():
    # Two replicates of random with different kept counts: mean x per point = (0, 1100, 2100), mean
    # accuracy (0, 0.15, 0.25). best's mean curve (0, 0), (1000, 0.2), (2000, 0.3) reaches 0.25 at
    # 1,500: ratio 1500 / 2100.
    randoms = [_curve("random", 0, [0, 1000, 2000], [0.0, 0.1, 0.2]), _curve("random", 1, [0, 1200, 2200], [0.0, 0.2, 0.3])]
    best = [_curve("loss_high", 0, [0, 1000, 2000], [0.0, 0.2, 0.3]), _curve("loss_high", 1, [0, 1000, 2000], [0.0, 0.2, 0.3])]
    means = iteration_means(randoms, "samples")
    assert np.allclose(means["x"], [0, 1100, 2100]) and np.allclose(means["mean"], [0, 0.15, 0.25])
    r = data_ratio("loss_high", iteration_means(best, "samples"), "random", means)
    assert r.best_x == pytest.approx(1500) and r.ratio == pytest.approx(1500 / 2100)
    # Grid: the smallest x of any child at each iteration = (1000, 2000): inside every curve's range.
    grid = common_grid(randoms + best, "samples")
    assert np.allclose(grid, [1000, 2000])
    assert interpolate(randoms[1], "samples", grid) == pytest.approx([0.2 * 1000 / 1200, 0.2 + 0.1 * 800 / 1000])
    a = analyse(randoms + best)["samples"]
    assert a["best"] == "loss_high" and a["names"] == ["random", "loss_high"]


def test_report_says_a_ratio_is_no_evidence_when_the_best_never_beats_random(tmp_path):
    # Crossing curves within their spread (what the 4x H100 Game of 24 study gave): loss_high's mean
    # reaches random's final mean before random does, but at no size is mean - se > random's mean + se.
    from drivers.study_report import render_markdown

    randoms = [_curve("random", s, [0, 1000, 2000], acc) for s, acc in enumerate([[0, .04, .03], [0, .03, .04], [0, .035, .03]])]
    highs = [_curve("loss_high", s, [0, 1000, 2000], acc) for s, acc in enumerate([[0, .03, .04], [0, .04, .03], [0, .035, .035]])]
    analysis = analyse(randoms + highs)
    assert analysis["samples"]["ratio"].ratio is not None and analysis["samples"]["best_beats_reference"] == 0
    assert "**No evidence**" in render_markdown("s", randoms + highs, analysis, 6, [])
    # Clearly separated curves: the ratio stands and carries no such warning.
    highs = [_curve("loss_high", s, [0, 1000, 2000], [0, .2 + s / 100, .3]) for s in range(3)]
    analysis = analyse(randoms + highs)
    assert analysis["samples"]["best_beats_reference"] > 0
    assert "No evidence" not in render_markdown("s", randoms + highs, analysis, 6, [])


def test_curve_from_history_puts_the_baseline_at_zero_and_skips_unevaluated_iterations():
    history = [{"synth/total": 500, "budget/teacher_tokens": 9e4, "eval/test_accuracy": 0.1},
               {"synth/total": 900, "budget/teacher_tokens": 2e5}]  # stopped before evaluation
    c = curve_from_history("random", 3, history, {"eval/test_accuracy": 0.02})
    assert c.samples.tolist() == [0, 500] and c.tokens.tolist() == [0, 9e4] and c.accuracy.tolist() == [0.02, 0.1]


def test_runs_that_fit_packs_gpu_fractions_per_device():
    run = [(1, 0), (1, 0.15), (1, 0.15)]  # teacher, student, trainer
    assert runs_that_fit([run] * 20, cpus=64, gpus=4) == 12  # 6 fractions of 0.15 per device
    assert runs_that_fit([run] * 20, cpus=9, gpus=4) == 3  # CPUs bind first
    assert runs_that_fit([[(1, 0), (1, 2)]] * 3, cpus=64, gpus=4) == 2  # whole GPUs: two runs of 2
    assert runs_that_fit([[(1, 0)]] * 5, cpus=4, gpus=0) == 4


# --- the runner on local Ray ------------------------------------------------------------------------
def _runs(client: MlflowClient, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_study_runs_children_concurrently_and_resume_skips_the_finished_one(tmp_path, shared_data, ray_local):
    cfg = tiny_config(tmp_path, shared_data, name="study",
                      student={"num_cpus": 0.5}, teacher={"num_cpus": 0.5},
                      trainer={"num_cpus_per_rank": 0.5, "max_restarts": 0},
                      tracking={"experiment": "study", "run_name": None, "output_dir": str(tmp_path / "out")})
    cfg["loop"].update(iterations=1, seeds_per_iteration=4)
    path = tmp_path / "tiny_study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    client = MlflowClient(cfg["tracking"]["tracking_uri"])

    # First invocation: the first trainer step of either child kills its rank (once); with no restarts
    # that child fails mid-iteration 0, the other finishes.
    faults = {"LOOPDISTILL_FAULTS": "trainer.rank0.step", "LOOPDISTILL_FAULT_DIR": str(tmp_path)}
    with pytest.raises(StudyIncomplete):
        run_study(str(path), ["random", "loss_high"], replicates=1, env_vars=faults)
    assert (tmp_path / "trainer.rank0.step.fired").is_file()
    study_dir = tmp_path / "out" / "study-tiny_study"
    spec = json.loads((study_dir / "study.json").read_text())
    assert sorted(spec["children"]) == ["game24-loss_high-s0", "game24-random-s0"]
    states = {n: json.loads(next((study_dir / "runs" / n).glob(f"{n}-*/state.json")).read_text()) for n in spec["children"]}
    done = [n for n, s in states.items() if s["stop_reason"]]
    broken = [n for n, s in states.items() if not s["stop_reason"]]
    assert len(done) == 1 and len(broken) == 1
    assert states[broken[0]]["iteration"] == 0 and "train" not in states[broken[0]]["stages_done"]

    runs = {r.info.run_name: r for r in _runs(client, "study")}
    parent = runs["study-tiny_study"]
    assert sorted(runs) == ["game24-loss_high-s0", "game24-random-s0", "study-tiny_study"]
    for n in spec["children"]:
        assert runs[n].data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert runs[done[0]].info.status == "FINISHED" and runs[broken[0]].info.status == "FAILED"
    # Concurrent: each child started before the other ended (times from the MLflow store).
    a, b = runs[done[0]].info, runs[broken[0]].info
    assert a.start_time < b.end_time and b.start_time < a.end_time
    finished_before = runs[done[0]].info.end_time
    finished_state = next((study_dir / "runs" / done[0]).glob("*/state.json"))
    mtime = finished_state.stat().st_mtime_ns

    # Same command again, no faults: the finished child is skipped, the broken one resumed.
    result = run_study(str(path), ["random", "loss_high"], replicates=1)
    assert result.children == {done[0]: "skipped (done)", broken[0]: "resumed"}
    runs_after = {r.info.run_name: r for r in _runs(client, "study")}
    assert len(_runs(client, "study")) == 3  # no new MLflow run: nothing started from scratch
    assert runs_after[done[0]].info.end_time == finished_before and "resumed" not in runs_after[done[0]].data.tags
    assert finished_state.stat().st_mtime_ns == mtime and len(list((study_dir / "runs" / done[0]).glob("*/state.json"))) == 1
    resumed = runs_after[broken[0]]
    assert resumed.info.run_id == runs[broken[0]].info.run_id and resumed.data.tags.get("resumed") == "true"
    assert resumed.info.status == "FINISHED" and resumed.data.metrics["eval/test_accuracy"] >= 0
    assert len(list((study_dir / "runs" / broken[0]).glob("*/state.json"))) == 1
    assert runs_after["study-tiny_study"].info.status == "FINISHED"

    # Report: both strategies (baseline + 1 iteration each), figures logged to the parent run.
    report = (study_dir / "report.md").read_text()
    assert "| **random** |" in report and "| **loss_high** |" in report and "Data ratio" in report
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)} | {f.path for f in client.list_artifacts(parent.info.run_id, "figures")}
    assert {"report.md", "figures/learning_curves.png", "figures/win_matrix_samples.png"} <= artifacts

    # The report is rewritten from the files alone (the CLI's study-report), and logged again.
    from drivers.cli import main

    (study_dir / "report.md").unlink()
    assert main(["study-report", str(study_dir)]) == 0
    assert (study_dir / "report.md").read_text() == report

    # A third invocation has nothing left to run.
    again = run_study(None, [], resume_dir=str(study_dir))
    assert set(again.children.values()) == {"skipped (done)"} and len(_runs(client, "study")) == 3


def test_a_second_study_of_another_config_under_the_same_name_is_refused(tmp_path, shared_data):
    from drivers.study import prepare
    from loopdistill.config import ConfigError

    cfg = tiny_config(tmp_path, shared_data, name="s", tracking={"output_dir": str(tmp_path / "out")})
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(cfg))

    study_dir, spec, _ = prepare(str(path), ["random"], 2, [])
    assert sorted(spec["children"]) == ["game24-random-s0", "game24-random-s1"]
    study_dir.mkdir(parents=True)
    (study_dir / "study.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match="another config.*loop"):
        prepare(str(path), ["random"], 2, ["loop.iterations=5"])
    with pytest.raises(ConfigError, match="unknown strategy 'nope'"):
        run_study(str(path), ["nope"], replicates=1, name="other")
    assert not (tmp_path / "mlflow.db").exists()  # refused before any MLflow run or Ray


def test_study_json_holds_no_credentials_and_resume_asks_for_the_original_command(tmp_path, shared_data):
    from drivers.study import STUDY_FILE, prepare
    from loopdistill.config import ConfigError

    cfg = tiny_config(tmp_path, shared_data, name="secret")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(cfg))
    url = "https://alice:s3cret@llm.example.com/v1?api_key=k3y"
    study_dir, spec, base = prepare(str(path), ["random"], 1, [f"teacher.openai.base_url={url}"])
    assert base.teacher.openai.base_url == url  # the run itself has the URL it was given
    study_dir.mkdir(parents=True)
    (study_dir / STUDY_FILE).write_text(json.dumps(spec))
    written = (study_dir / STUDY_FILE).read_text()
    assert "s3cret" not in written and "k3y" not in written and "alice" not in written
    with pytest.raises(ConfigError, match="original"):
        prepare(None, [], 1, [], resume_dir=str(study_dir))
