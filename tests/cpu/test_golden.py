"""Golden outcome of the tiny loop, recorded before the stage/runner refactor (issue 10) and checked
after it: the selected seed ids, the synthetic rows, the teacher spend and the deterministic metrics
of two strategies (loss_high, and judge_hard, which also exercises the judge path), plus a run whose
driver is SIGKILLed mid-iteration and resumed, which must end in the same place.

The figures are read from what the run left behind (iter_NN/*.parquet, state.json, the MLflow store),
never from the code under test. To record them again (only when a change is meant to change the
outcome, said in the commit): LOOPDISTILL_WRITE_GOLDEN=1 pytest tests/cpu/test_golden.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from mlflow.tracking import MlflowClient

from loop_helpers import kill_once_stage_done, tiny_config

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "tiny_loop.json"
WRITE = os.environ.get("LOOPDISTILL_WRITE_GOLDEN") == "1"

# Metrics that measure the machine (wall or busy seconds, money from seconds) or the process
# (counters of actors restarted by the crash), not the outcome of the loop.
VOLATILE = ("time/", "startup/", "budget/accelerator_seconds", "budget/usd", "budget/student_seconds",
            "budget/teacher_seconds", "budget/trainer_seconds", "budget/reward_seconds",
            "trainer/accelerator_seconds", "trainer/seconds", "teacher/rate_limit_wait_s",
            "trainer/tokens_per_s", "trainer/samples_per_s")


def _config(tmp_path: Path, data: Path, name: str, strategy: str) -> Path:
    cfg = tiny_config(tmp_path, data, name, loop={"strategy": strategy}, ray={"num_cpus": 4})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, wait: bool = True):
    cmd = [sys.executable, "-m", "drivers.cli", "run", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _run_dir(root: Path) -> Path:
    return next(p.parent for p in root.glob("*/config.json"))


def _outcome(tmp_path: Path, run_dir: Path) -> dict:
    """What a run left: per iteration the selected ids and synthetic rows; the ledger's teacher
    spend; every deterministic metric at every step, from the MLflow store."""
    iterations = []
    for it in sorted(run_dir.glob("iter_*")):
        synthetic = pq.read_table(it / "synthetic.parquet").select(["id", "parent_id", "question", "answer"]).to_pylist()
        iterations.append({"selected": pq.read_table(it / "selected.parquet").column("id").to_pylist(), "synthetic": synthetic})
    state = json.loads((run_dir / "state.json").read_text())
    ledger = {k: state["ledger"][k] for k in ("teacher_requests", "teacher_input_tokens", "teacher_output_tokens", "teacher_samples")}
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(state["mlflow_run_id"])
    metrics = {}
    for key in sorted(run.data.metrics):
        if key.startswith(VOLATILE):
            continue
        history = client.get_metric_history(run.info.run_id, key)
        if key.startswith("trainer/step_loss_iter_"):
            continue  # per-step curves: their last value is in trainer/train_loss
        metrics[key] = {str(m.step): m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))}
    return {"iterations": iterations, "ledger": ledger, "stop_reason": state["stop_reason"], "metrics": metrics}


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6)


def _compare(got: dict, want: dict, label: str) -> None:
    assert got["iterations"] == want["iterations"], f"{label}: selected ids or synthetic rows differ"
    assert got["ledger"] == want["ledger"], label
    assert got["stop_reason"] == want["stop_reason"], label
    missing = sorted(set(want["metrics"]) - set(got["metrics"]))
    assert not missing, f"{label}: metrics no longer logged: {missing}"
    for key, steps in want["metrics"].items():
        assert set(got["metrics"][key]) == set(steps), f"{label}: {key} steps {sorted(got['metrics'][key])} != {sorted(steps)}"
        for step, value in steps.items():
            assert _close(got["metrics"][key][step], value), f"{label}: {key} at step {step}: {got['metrics'][key][step]} != {value}"


def _kill_mid_iteration_1(tmp_path: Path, config: Path) -> Path:
    """SIGKILL the driver (its whole process group) once iteration 1's generate stage is done, then
    `--resume` the run directory."""
    kill_once_stage_done(_cli(str(config), wait=False), tmp_path / "killed", 1, "generate")
    run_dir = _run_dir(tmp_path / "killed")
    resumed = _cli("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run_dir


def test_tiny_loop_matches_the_golden_record(tmp_path, shared_data):
    got = {}
    for strategy in ("loss_high", "judge_hard"):
        proc = _cli(str(_config(tmp_path, shared_data, strategy, strategy)))
        assert proc.returncode == 0, proc.stderr[-3000:]
        got[strategy] = _outcome(tmp_path, _run_dir(tmp_path / strategy))
    killed = _kill_mid_iteration_1(tmp_path, _config(tmp_path, shared_data, "killed", "loss_high"))
    resumed = _outcome(tmp_path, killed)
    if WRITE:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    for strategy in ("loss_high", "judge_hard"):
        _compare(got[strategy], want[strategy], strategy)
    # The killed and resumed run ends where the uninterrupted one does: same data, same spend, same
    # evaluation (counters of restarted actors aside, which VOLATILE leaves out).
    _compare(resumed, want["loss_high"], "killed and resumed loss_high")
