"""What a finished run leaves in MLflow, read back from the store: its name, where it came from, its
files, one set of curves from the baseline (step 0) on, the trainer's per-step loss, an experiment that
opens on its runs, and a `runs/` folder that still opens with its artifacts after it is moved."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from loop_helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, shared_data):
    """A two-iteration tiny run through the CLI, logging to the default store under its output dir."""
    tmp = tmp_path_factory.mktemp("tracking")
    cfg = tiny_config(tmp, shared_data, "tracked", ray={"num_cpus": 4}, loop={"iterations": 2, "seeds_per_iteration": 2})
    cfg["tracking"] = {"experiment": "tracked", "output_dir": str(tmp / "runs")}  # no run_name: named from the config
    path = tmp / "tracked.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run([sys.executable, "-m", "drivers.cli", "run", str(path)], cwd=REPO, env=dict(env, PYTHONPATH=str(REPO)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = next((tmp / "runs").glob("*/summary.json")).parent
    client = MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    run = client.get_run(json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"])
    return tmp, run_dir, client, run, proc


def test_run_is_named_from_the_config_and_tagged_with_its_source(finished):
    _, run_dir, _, run, _ = finished
    assert run.info.run_name == run_dir.name
    assert run_dir.name.startswith("game24-loss_high-s0-2")
    tags = run.data.tags
    assert "drivers.cli run" in tags["mlflow.source.name"] and tags["mlflow.source.type"] == "LOCAL"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert tags["mlflow.source.git.commit"].startswith(head) and len(head) == 40
    assert tags["stop_reason"] == "completed" and run.info.status == "FINISHED"


def test_config_summary_and_log_are_artifacts(finished):
    _, run_dir, client, run, _ = finished
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "summary.json", "run.log", "iter_00", "iter_01"} <= names
    local = Path(client.download_artifacts(run.info.run_id, "summary.json"))
    assert json.loads(local.read_text()) == json.loads((run_dir / "summary.json").read_text())


def test_baseline_is_step_0_of_the_same_curves(finished):
    _, _, client, run, _ = finished
    history = client.get_metric_history(run.info.run_id, "eval/test_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]
    state = json.loads((finished[1] / "state.json").read_text())
    assert next(m.value for m in history if m.step == 0) == state["baseline"]["eval/test_accuracy"]
    assert next(m.value for m in history if m.step == 2) == state["history"][1]["eval/test_accuracy"]
    assert not [k for k in run.data.metrics if k.startswith("baseline/")]  # one set of curves, no duplicates


def test_trainer_loss_per_optimizer_step(finished):
    _, run_dir, client, run, _ = finished
    state = json.loads((run_dir / "state.json").read_text())
    for t in range(2):
        series = client.get_metric_history(run.info.run_id, f"trainer/step_loss_iter_{t:02d}")
        steps = int(state["history"][t]["trainer/steps"])
        assert sorted(m.step for m in series) == list(range(1, steps + 1))
        assert all(m.value > 0 for m in series)


def test_experiment_opens_on_its_runs(finished):
    _, _, client, run, _ = finished
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_final_table_and_library_noise_in_the_log_file(finished):
    _, run_dir, _, _, proc = finished
    assert "baseline" in proc.stderr and "test acc" in proc.stderr  # the final table
    assert "mlflow.store.db.utils" not in proc.stderr  # MLflow's own INFO lines went to the file
    log = (run_dir / "run.log").read_text()
    assert "loopdistill" in log


def test_copied_runs_folder_opens_with_its_artifacts(finished, tmp_path):
    tmp, _, _, run, _ = finished
    copy = tmp_path / "laptop" / "runs"
    shutil.copytree(tmp / "runs", copy)
    moved = tmp / "runs-moved-away"
    (tmp / "runs").rename(moved)  # the original location is gone, as on another machine
    try:
        out = subprocess.run([sys.executable, "-m", "drivers.tracking", "relocate", str(copy)], cwd=REPO, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)), timeout=120)
        assert out.returncode == 0 and out.stdout.startswith("1 experiment"), out.stderr
        client = MlflowClient(f"sqlite:///{copy / 'mlflow.db'}")
        local = Path(client.download_artifacts(run.info.run_id, "config.json", dst_path=str(tmp_path / "dl")))
        assert json.loads(local.read_text())["task"]["name"] == "game24"
        assert client.get_run(run.info.run_id).info.artifact_uri.startswith((copy / "mlartifacts").as_uri())
    finally:
        moved.rename(tmp / "runs")


def test_git_commit_without_a_checkout_comes_from_the_image_file_then_the_env(tmp_path, monkeypatch):
    """A Docker image has no .git: the commit recorded beside the code (GIT_COMMIT), else the env var."""
    from drivers import tracking

    monkeypatch.setattr(tracking, "REPO_ROOT", tmp_path)  # not inside any git checkout
    monkeypatch.delenv("LOOPDISTILL_GIT_COMMIT", raising=False)
    assert tracking.git_commit() is None
    monkeypatch.setenv("LOOPDISTILL_GIT_COMMIT", "e" * 40)
    assert tracking.git_commit() == "e" * 40
    (tmp_path / "GIT_COMMIT").write_text("a" * 40 + "\n")
    assert tracking.git_commit() == "a" * 40
