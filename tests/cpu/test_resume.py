"""A run that dies inside a stage resumes after its last completed stage, in the same MLflow run,
without paying any teacher request twice, and ends where an uninterrupted run ends."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from actors.request_cache import RequestCache
from drivers import synthesis
from drivers.loop import resume, run
from drivers.stages import generate as generate_stage
from drivers.stages import train as train_stage
from loop_helpers import run_outcome as _outcome
from loop_helpers import tiny_config
from loopdistill.config import build_config


def _config(tmp_path: Path, data: Path, name: str) -> dict:
    return tiny_config(tmp_path, data, name)


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data, ray_local):
    """An uninterrupted run with the same config and seeds."""
    return run(build_config(_config(tmp_path_factory.mktemp("ref"), shared_data, "reference")))


@pytest.mark.parametrize("crash_stage", ["train", "generate"])
def test_resume_after_a_crash_inside_a_stage(tmp_path, shared_data, ray_local, monkeypatch, crash_stage, reference):
    stage = {"train": train_stage, "generate": generate_stage}[crash_stage]
    original = stage.run

    def crash_in_iteration_1(ctx, inputs, *args, **kwargs):
        t = inputs.iteration
        if t == 1:
            if crash_stage == "generate":  # die after the rewrites were answered (and paid)
                loop = ctx.config.loop
                ctx.teacher.ask(synthesis.rewrite_requests(
                    ctx.task, inputs.tables["selected"].to_pylist(), ctx.splits.seeds.to_pylist(), loop.few_shot_k, t, loop.seed),
                    t, "rewrite")
            raise Crash("injected")
        return original(ctx, inputs, *args, **kwargs)

    monkeypatch.setattr(stage, "run", crash_in_iteration_1)
    with pytest.raises(Crash):
        run(build_config(_config(tmp_path, shared_data, "crashed")))
    run_dir = next((tmp_path / "crashed").glob("crashed-*"))
    state = json.loads((run_dir / "state.json").read_text())
    assert state["iteration"] == 1 and crash_stage not in state["stages_done"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    assert client.get_run(state["mlflow_run_id"]).info.status == "FAILED"

    monkeypatch.setattr(stage, "run", original)
    summary = resume(run_dir)
    assert summary.iterations_completed == 2 and summary.mlflow_run_id == state["mlflow_run_id"]
    assert client.get_run(summary.mlflow_run_id).info.status == "FINISHED"
    assert _outcome(run_dir) == _outcome(Path(reference.run_dir))
    spent = json.loads((run_dir / "state.json").read_text())["ledger"]
    paid = RequestCache(run_dir / "teacher_cache.sqlite").stats()
    assert spent["teacher_requests"] == paid["requests"]  # no request paid twice
    assert spent["teacher_output_tokens"] == paid["output_tokens"]
    ref_spent = json.loads((Path(reference.run_dir) / "state.json").read_text())["ledger"]
    assert spent["teacher_output_tokens"] == ref_spent["teacher_output_tokens"]


def test_resume_of_a_missing_run_dir_names_it(tmp_path):
    from drivers.checkpoint import ResumeError

    with pytest.raises(ResumeError, match=str(tmp_path / "nope")):
        resume(tmp_path / "nope")
