"""Shared by the loop tests: a tiny real config (tiny random Llama, Game of 24, programmatic teacher)
and the outcome of a run (what an interrupted run must reproduce)."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pyarrow.parquet as pq


def tiny_config(tmp_path: Path, data: Path, name: str = "run", model: str = "tiny-random-llama", **sections) -> dict:
    """A two-iteration loop that runs in well under a minute on 2 CPU cores; `sections` update it."""
    cfg = {
        "task": {"name": "game24", "data_path": str(data / "game24" / "24.csv"), "num_seeds": 8, "num_validation": 4, "num_test": 4},
        "student": {"model": {"path": model}, "max_new_tokens": 16, "batch_size": 8},
        "teacher": {"engine": "programmatic", "model": {"path": model}, "batch_size": 2},
        "trainer": {"epochs": 1, "micro_batch_size": 4, "max_seq_len": 192, "lora_rank": 4, "lora_alpha": 4},
        "loop": {"iterations": 2, "strategy": "loss_high", "seeds_per_iteration": 4},
        "tracking": {"experiment": name, "run_name": name, "output_dir": str(tmp_path / name), "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


def run_outcome(run_dir: Path) -> list:
    """Per iteration: the selected seed ids and the synthetic rows (id, question, answer)."""
    return [
        (pq.read_table(it / "selected.parquet").column("id").to_pylist(),
         pq.read_table(it / "synthetic.parquet").select(["id", "question", "answer"]).to_pylist())
        for it in sorted(run_dir.glob("iter_*"))
    ]


def kill_once_stage_done(proc, root: Path, t: int, stage: str, timeout_s: float = 600.0) -> None:
    """SIGKILL the process group of `proc` (a `drivers.cli run` started with start_new_session) once
    the state.json under `root` shows `stage` of iteration t done, or a later iteration started.
    Fails if the run ended first (it could not be killed mid-run)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and proc.poll() is None:
        files = list(root.glob("*/state.json"))
        if files:
            try:
                state = json.loads(files[0].read_text())
            except json.JSONDecodeError:  # read while being written
                state = {}
            if state.get("iteration", 0) > t or (state.get("iteration") == t and stage in state.get("stages_done", [])):
                break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
