"""Fault injection on real Ray: actors killed mid-work (teacher mid-generation, student mid-scoring,
a trainer rank mid-epoch) and the driver killed between and inside stages. Every run completes, no
teacher request is paid twice, and the outcome equals an uninterrupted run with the same seeds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from actors.request_cache import RequestCache
from loop_helpers import run_outcome as _outcome
from loop_helpers import kill_once_stage_done, tiny_config

REPO = Path(__file__).resolve().parents[2]


def _write_config(tmp_path: Path, data: Path, name: str) -> Path:
    cfg = tiny_config(tmp_path, data, name, trainer={"epochs": 2, "micro_batch_size": 2}, ray={"num_cpus": 4})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: str, env: dict | None = None, wait: bool = True):
    cmd = [sys.executable, "-m", "drivers.cli", "run", *args]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if wait:
        return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _run_dir(root: Path) -> Path:
    return next(p.parent for p in root.glob("*/config.json"))


def _paid_once(run_dir: Path) -> tuple[int, int]:
    """(requests the ledger paid, distinct requests in the cache): equal when none was paid twice."""
    spent = json.loads((run_dir / "state.json").read_text())["ledger"]
    return spent["teacher_requests"], RequestCache(run_dir / "teacher_cache.sqlite").stats()["requests"]


def test_fault_point_fires_once_and_only_when_both_variables_are_set(tmp_path):
    """actors.runtime.inject_fault in a real process: exit 137 at a listed point, a marker, then the
    restarted process goes on; unlisted points and a missing marker directory never fire."""
    code = "from actors.runtime import inject_fault; inject_fault('x.step'); inject_fault('y.step'); print('went on')"

    def once(**env):
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPDISTILL_FAULT")}
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**full_env, "PYTHONPATH": str(REPO), **env},
                              capture_output=True, text=True, timeout=60)

    both = {"LOOPDISTILL_FAULTS": "x.step,z.step", "LOOPDISTILL_FAULT_DIR": str(tmp_path)}
    first, second = once(**both), once(**both)
    assert (first.returncode, first.stdout) == (137, "")
    assert (second.returncode, second.stdout.strip()) == (0, "went on")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.step.fired"]
    assert once(LOOPDISTILL_FAULTS="y.step").returncode == 0  # no marker directory: off


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("ref")
    proc = _cli(str(_write_config(tmp, shared_data, "ref")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _outcome(_run_dir(tmp / "ref"))


def test_actors_killed_mid_work(tmp_path, shared_data, reference):
    faults = "teacher.generate,student.predict,trainer.rank0.step"
    env = {"LOOPDISTILL_FAULTS": faults, "LOOPDISTILL_FAULT_DIR": str(tmp_path)}
    proc = _cli(str(_write_config(tmp_path, shared_data, "faulty")), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fired = sorted(p.stem for p in tmp_path.glob("*.fired"))
    assert fired == sorted(faults.split(","))  # every fault really happened
    run_dir = _run_dir(tmp_path / "faulty")
    assert json.loads((run_dir / "state.json").read_text())["iteration"] == 2
    paid, distinct = _paid_once(run_dir)
    assert paid == distinct
    assert _outcome(run_dir) == reference


@pytest.mark.parametrize("kill_after", ["iteration 0: stage train", "iteration 1: stage generate"])
def test_driver_killed_then_resumed(tmp_path, shared_data, reference, kill_after):
    """Kill the driver (SIGKILL, whole process group) once the state shows the given stage started
    or done, then `--resume`."""
    config = _write_config(tmp_path, shared_data, "killed")
    proc = _cli(str(config), wait=False)
    t, stage = int(kill_after.split()[1].rstrip(":")), kill_after.split()[-1]
    kill_once_stage_done(proc, tmp_path / "killed", t, stage)
    run_dir = _run_dir(tmp_path / "killed")
    resumed = _cli("--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "state.json").read_text())["iteration"] == 2
    paid, distinct = _paid_once(run_dir)
    assert paid == distinct
    assert _outcome(run_dir) == reference
