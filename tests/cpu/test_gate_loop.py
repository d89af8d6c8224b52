"""The calibration gate in the real loop (tiny random Llama, real Ray actors, real MLflow store), each
action forced by config (gate.ece_rise below -1 fires on every judged iteration), with a crash after the
decision and a resume that repeats nothing; the figures are read back from the MLflow store."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from drivers import gating
from drivers.loop import resume, run
from drivers.stages import gate as gate_stage
from drivers.stages import train as train_stage
from loop_helpers import tiny_config
from loopdistill.config import build_config

FORCED = {"ece_rise": -2.0, "min_accuracy_gain": 1.0}  # fires from gate.first_iteration (1) on


class Crash(RuntimeError):
    pass


def _state(run_dir: Path) -> dict:
    return json.loads((run_dir / "state.json").read_text())


def _run_dir(tmp_path: Path, name: str) -> Path:
    return next((tmp_path / name).glob(f"{name}-*"))


def _client(tmp_path: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")


def _decisions(state: dict) -> list[tuple[int, int, str]]:
    return [(d["iteration"], d["attempt"], d["action"]) for d in state["gate_decisions"]]


def _count_train_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = train_stage.run

    def counted(ctx, inputs, *args, **kwargs):
        calls.append(inputs.iteration)
        return original(ctx, inputs, *args, **kwargs)

    monkeypatch.setattr(train_stage, "run", counted)
    return calls


def test_rollback_then_resume(tmp_path, shared_data, ray_local, monkeypatch):
    """Rollback at iterations 1 and 2; the driver dies after iteration 1's decision. After the resume,
    iteration 2's student (rolled back) answers the pool exactly as iteration 0's adapter did, and
    trains without iteration 1's rows."""
    cfg = tiny_config(tmp_path, shared_data, "rollback", loop={"iterations": 3, "strategy": "loss_high", "seeds_per_iteration": 4},
                      gate={"action": "rollback", **FORCED})
    original = gate_stage.forecast

    def crash_at_1(ctx, inputs):
        if inputs.iteration == 1:
            raise Crash("after the gate decision of iteration 1")
        return original(ctx, inputs)

    monkeypatch.setattr(gate_stage, "forecast", crash_at_1)
    with pytest.raises(Crash):
        run(build_config(cfg))
    run_dir = _run_dir(tmp_path, "rollback")
    assert _decisions(_state(run_dir)) == [(0, 0, "accept"), (1, 0, "rollback")]

    monkeypatch.setattr(gate_stage, "forecast", original)
    trained = _count_train_calls(monkeypatch)
    summary = resume(run_dir)
    assert summary.iterations_completed == 3 and summary.stop_reason == "completed"
    assert trained == [2]  # iteration 1 was not trained again
    state = _state(run_dir)
    assert _decisions(state) == [(0, 0, "accept"), (1, 0, "rollback"), (2, 0, "rollback")]  # none taken twice
    assert state["excluded_iterations"] == [1, 2] and state["accepted_iteration"] == 0
    assert state["adapter_dir"] == state["accepted_adapter"] == str(run_dir / "iter_00" / "adapter")

    # The student of iteration 2 is iteration 0's: its greedy answers on the pool equal those that
    # iteration 0's adapter gave at the start of iteration 1.
    cols = ["id", "prediction", "confidence", "loss"]
    losses = [pq.read_table(run_dir / f"iter_{t:02d}" / "predictions.parquet").column("loss").to_pylist() for t in (0, 1)]
    assert losses[0] != losses[1]  # the adapters do change the answers' losses: the comparison below can fail
    assert pq.read_table(run_dir / "iter_02" / "predictions.parquet").select(cols).to_pylist() == \
        pq.read_table(run_dir / "iter_01" / "predictions.parquet").select(cols).to_pylist()
    rows = {t: pq.read_table(run_dir / f"iter_{t:02d}" / "synthetic.parquet").num_rows for t in range(3)}
    assert rows[1] > 0
    assert state["history"][2]["trainer/examples"] == rows[0] + rows[2]  # counted by the trainer rank

    client = _client(tmp_path)
    history = client.get_metric_history(summary.mlflow_run_id, "gate/decision")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.0), (2, 2.0), (3, 2.0)]  # logged once each
    assert client.get_run(summary.mlflow_run_id).data.tags["gate/iter_01"].startswith("rollback")
    names = {Path(a.path).name for a in client.list_artifacts(summary.mlflow_run_id, "plots/iter_01")}
    assert names == {"accuracy.png", "reliability.png", "forecast.png", "budget.png"}
    png = Path(client.download_artifacts(summary.mlflow_run_id, "plots/iter_02/forecast.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    forecast = json.loads((run_dir / "iter_02" / "forecast.json").read_text())
    assert len(forecast["D"]) == 4 and forecast["fit"]["n"] == 4  # baseline + 3 iterations
    assert client.get_metric_history(summary.mlflow_run_id, "forecast/beta")[-1].step == 3


def test_reduce_synthetic_ratio_then_forecast_stop(tmp_path, shared_data, ray_local, monkeypatch):
    """reduce_synthetic_ratio at iteration 1: 1.0 -> 0.5, retrain on a half-real set; the retrained
    adapter fires again at the floor and is rolled back. The driver dies after the retrain; the resume
    trains nothing again. The forecast (3 points) then stops the run, and a second resume runs nothing."""
    cfg = tiny_config(tmp_path, shared_data, "reduce", loop={"iterations": 3, "strategy": "loss_high", "seeds_per_iteration": 4},
                      gate={"action": "reduce_synthetic_ratio", "ratio_step": 0.5, "min_synthetic_fraction": 0.5, **FORCED},
                      forecast={"stop_when_gain_below": 1.0, "bootstrap": 20})
    original = gating.decide

    def crash_after_retrain(config, iteration, attempt, *args, **kwargs):
        if (iteration, attempt) == (1, 1):
            raise Crash("after the retrain")
        return original(config, iteration, attempt, *args, **kwargs)

    monkeypatch.setattr(gating, "decide", crash_after_retrain)
    with pytest.raises(Crash):
        run(build_config(cfg))
    run_dir = _run_dir(tmp_path, "reduce")
    state = _state(run_dir)
    assert _decisions(state) == [(0, 0, "accept"), (1, 0, "reduce_synthetic_ratio")]
    assert "retrain1" in state["stages_done"] and state["synthetic_fraction"] == 0.5

    monkeypatch.setattr(gating, "decide", original)
    trained = _count_train_calls(monkeypatch)
    summary = resume(run_dir)
    assert trained == []  # neither iteration 1's training nor its retrain ran again
    assert summary.iterations_completed == 2 and summary.stop_reason.startswith("forecast: predicted validation-error gain")
    state = _state(run_dir)
    assert _decisions(state) == [(0, 0, "accept"), (1, 0, "reduce_synthetic_ratio"), (1, 1, "rollback")]
    it1 = state["history"][1]
    assert it1["trainer/synthetic_fraction"] == 0.5 and it1["gate/retrains"] == 1
    assert it1["trainer/examples"] == 2 * it1["trainer/synthetic_rows"]  # the trainer's own count
    assert (run_dir / "iter_01" / "adapter_retrain1").is_dir()
    assert state["adapter_dir"] == str(run_dir / "iter_00" / "adapter") and state["excluded_iterations"] == [1]
    assert not (run_dir / "iter_02").exists()

    before = (run_dir / "state.json").read_bytes()
    again = resume(run_dir)
    assert again.stop_reason == summary.stop_reason and again.iterations_completed == 2
    assert (run_dir / "state.json").read_bytes() == before and not (run_dir / "iter_02").exists()
    client = _client(tmp_path)
    assert [m.value for m in client.get_metric_history(summary.mlflow_run_id, "gate/decision")] == [0.0, 2.0]
    assert len(client.get_metric_history(summary.mlflow_run_id, "forecast/predicted_gain")) == 1


def test_halt_stops_cleanly_and_resume_runs_nothing(tmp_path, shared_data, ray_local):
    cfg = tiny_config(tmp_path, shared_data, "halt", loop={"iterations": 3, "strategy": "loss_high", "seeds_per_iteration": 4},
                      gate={"action": "halt", **FORCED})
    summary = run(build_config(cfg))
    run_dir = Path(summary.run_dir)
    assert summary.iterations_completed == 2 and summary.stop_reason.startswith("gate halt: val ECE")
    state = _state(run_dir)
    assert _decisions(state) == [(0, 0, "accept"), (1, 0, "halt")]
    assert state["adapter_dir"] == str(run_dir / "iter_00" / "adapter")  # the last accepted student
    assert (run_dir / "iter_01" / "adapter").is_dir() and not (run_dir / "iter_02").exists()  # finished work kept
    client = _client(tmp_path)
    assert client.get_run(summary.mlflow_run_id).data.tags["stop_reason"] == summary.stop_reason
    assert [m.value for m in client.get_metric_history(summary.mlflow_run_id, "gate/decision")] == [0.0, 1.0]
    before = (run_dir / "state.json").read_bytes()
    again = resume(run_dir)
    assert (again.iterations_completed, again.stop_reason) == (2, summary.stop_reason)
    assert (run_dir / "state.json").read_bytes() == before and not (run_dir / "iter_02").exists()
