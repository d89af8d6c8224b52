"""`ray job submit` against a local head on 127.0.0.1 runs the quickstart config (tiny model)."""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


def test_ray_job_submit_runs_quickstart(tmp_path, shared_data):
    out = tmp_path / "runs"
    data = shared_data / "game24" / "24.csv"
    env = dict(os.environ, LOOPDISTILL_DATA_PATH=str(data), RAY_PORT="6391", RAY_DASHBOARD_PORT="8291")
    overrides = [
        "task.name=game24",
        "task.max_hops=null",  # the quickstart's ProntoQA generator settings
        "task.opposite_distractor=null",
        f"tracking.output_dir={out}",
        "student.model.path=tiny-random-llama",
        "teacher.model.path=tiny-random-llama",
        "student.max_new_tokens=8",
        "task.num_seeds=6",
        "task.num_validation=2",
        "task.num_test=2",
        "loop.iterations=1",
        "loop.seeds_per_iteration=2",
        "trainer.epochs=1",
    ]
    proc = subprocess.run(
        ["bash", "cluster/local_job_submit.sh", "configs/quickstart.yaml", *overrides],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert re.search(r"Job '\S+' succeeded", proc.stdout + proc.stderr)
    runs = list(out.glob("game24-*/summary.json"))
    assert len(runs) == 1
    with sqlite3.connect(out / "mlflow.db") as db:
        steps = db.execute("select step from metrics where key='eval/test_accuracy'").fetchall()
    assert sorted(steps) == [(0,), (1,)]  # the baseline, then iteration 0
