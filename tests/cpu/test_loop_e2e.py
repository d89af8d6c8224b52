"""The real closed loop on local Ray: real actors, real DeepSpeed, real MLflow store.

The fast tests use a tiny random Llama; the slow one the real SmolLM2-135M-Instruct."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from drivers.loop import run
from loopdistill.config import build_config
from loop_helpers import tiny_config
from loopdistill.tasks import get_task


def _config(tmp_path: Path, data: Path, model: str = "tiny-random-llama", **sections) -> dict:
    return tiny_config(tmp_path, data, "e2e", model=model, **sections)


def _metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


SECRET = "sk-loopdistill-test-0123456789abcdef"


def test_closed_loop_tiny_llama(tmp_path, shared_data, ray_local, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = build_config(_config(tmp_path, shared_data))
    summary = run(config)
    # the store is chosen per run: nothing process-wide is left for later runs to log into
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert summary.iterations_completed == 2 and summary.stop_reason == "completed"

    client = MlflowClient(config.tracking.tracking_uri)
    mlrun = client.get_run(summary.mlflow_run_id)
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["loop.strategy"] == "loss_high"
    # step 0 is the untrained student (evaluation only); step t + 1 follows iteration t
    for key in ("eval/test_accuracy", "eval/val_ece"):
        assert _metric_steps(client, summary.mlflow_run_id, key) == [0, 1, 2], key
    for key in ("select/selected_mean_score", "synth/kept", "budget/teacher_tokens", "budget/trainer_seconds",
                "time/train_s", "trainer/val_loss_best"):
        assert _metric_steps(client, summary.mlflow_run_id, key) == [1, 2], key
    artifacts = {a.path for a in client.list_artifacts(summary.mlflow_run_id, "iter_01")}
    assert {"iter_01/predictions.parquet", "iter_01/synthetic.parquet", "iter_01/scores.parquet"} <= artifacts
    assert "iter_01/adapter" in artifacts

    run_dir = Path(summary.run_dir)
    task = get_task("game24")
    synthetic = [r for p in sorted(run_dir.glob("iter_*/synthetic.parquet")) for r in pq.read_table(p).to_pylist()]
    assert len(synthetic) > 0
    for row in synthetic:  # every kept teacher pair is a verified, solvable puzzle
        assert task.verify(row["answer"], row["reference"])
    parents = {r["parent_id"] for r in synthetic}
    selected = set(pq.read_table(run_dir / "iter_00" / "selected.parquet").column("id").to_pylist())
    selected |= set(pq.read_table(run_dir / "iter_01" / "selected.parquet").column("id").to_pylist())
    assert parents <= selected
    # loss_high picked the highest-loss seeds of the student's own answers
    preds = pq.read_table(run_dir / "iter_00" / "predictions.parquet").to_pylist()
    top = sorted(preds, key=lambda r: -r["loss"])[:4]
    iter0 = set(pq.read_table(run_dir / "iter_00" / "selected.parquet").column("id").to_pylist())
    assert {r["id"] for r in top} == iter0
    state = json.loads((run_dir / "state.json").read_text())
    spent = state["ledger"]
    assert spent["teacher_output_tokens"] >= sum(r["teacher_output_tokens"] for r in synthetic) > 0
    # the ledger paid exactly the distinct requests the paid-once cache holds
    from actors.request_cache import RequestCache

    paid = RequestCache(run_dir / "teacher_cache.sqlite").stats()
    assert (paid["requests"], paid["input_tokens"], paid["output_tokens"]) == (
        spent["teacher_requests"], spent["teacher_input_tokens"], spent["teacher_output_tokens"])
    # a secret in the environment reaches neither the run directory nor the MLflow store
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_budget_stop_keeps_finished_iterations(tmp_path, shared_data, ray_local):
    # Each request reserves prompt + 1,000 output tokens, so 1,050 output tokens pay for one rewrite and
    # one answer in iteration 0 (the programmatic teacher writes ~10-60 tokens each), then not even one
    # rewrite in iteration 1: the run must stop there, cleanly, without overspending.
    config = build_config(
        _config(tmp_path, shared_data, budget={"teacher_output_tokens": 1050}, teacher={"max_new_tokens": 1000})
    )
    summary = run(config)
    assert summary.iterations_completed == 1
    assert "cannot pay for one more request" in summary.stop_reason
    client = MlflowClient(config.tracking.tracking_uri)
    mlrun = client.get_run(summary.mlflow_run_id)
    assert mlrun.info.status == "FINISHED" and mlrun.data.tags["stop_reason"] == summary.stop_reason
    # the untrained student (step 0) and the one finished iteration (step 1); nothing of the stopped one
    assert _metric_steps(client, summary.mlflow_run_id, "eval/test_accuracy") == [0, 1]
    state = json.loads((Path(summary.run_dir) / "state.json").read_text())
    assert state["iteration"] == 1 and state["stages_done"] == ["predict", "select"]
    assert 0 < state["ledger"]["teacher_output_tokens"] <= 1050
    assert state["ledger"]["teacher_samples"] == 1


def test_missing_data_file_fails_before_starting(tmp_path, shared_data):
    from loopdistill.tasks import DataError

    cfg = _config(tmp_path, shared_data)
    cfg["task"]["data_path"] = str(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="nope.csv"):
        run(build_config(cfg))
    assert not (tmp_path / "e2e").exists()


@pytest.mark.slow
def test_closed_loop_smollm2(tmp_path, shared_data, ray_local):
    cfg = _config(tmp_path, shared_data, model="smollm2", loop={"iterations": 1})
    cfg["task"].update({"num_seeds": 4, "num_validation": 2, "num_test": 2})
    cfg["student"]["max_new_tokens"] = 24
    summary = run(build_config(cfg))
    assert summary.iterations_completed == 1
    metrics = summary.history[0]
    assert metrics["synth/kept"] > 0 and metrics["trainer/steps"] > 0
    preds = pq.read_table(Path(summary.run_dir) / "iter_00" / "predictions.parquet").to_pylist()
    assert all(p["output_tokens"] > 0 and p["loss"] > 0 for p in preds)
