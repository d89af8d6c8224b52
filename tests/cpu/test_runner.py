"""The runner's checkpoint rules, on stand-in stages (the real stages run through the runner in
test_resume.py, test_gate_loop.py and test_golden.py): a finished stage is read back from its Parquet
file instead of run again; a stage that an older run directory never recorded is not run after a later
stage finished; a budget stop marks nothing done; a stage must return the tables it declares."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pyarrow as pa
import pytest

from drivers import runner
from drivers.budget import BudgetLedger
from drivers.checkpoint import RunState
from drivers.context import RunContext, StageResult
from loopdistill.config import BudgetConfig


def _stage(name: str, tables: tuple, result: StageResult):
    calls: list[int] = []

    def run(ctx, inputs):
        calls.append(inputs.iteration)
        return result

    return SimpleNamespace(__name__=f"drivers.stages.{name}", TABLES=tables, run=run, calls=calls)


def test_stages_are_checkpointed_read_back_and_never_run_late(tmp_path, monkeypatch):
    rows = pa.table({"x": [1, 2, 3]})
    first = _stage("first", ("rows",), StageResult({"rows": rows}, {"m/first": 1.0}))
    added = _stage("added", (), StageResult({}, {"m/added": 1.0}))  # new since an older run directory
    stopping = _stage("stopping", (), StageResult(stop_reason="budget exhausted: test"))
    monkeypatch.setattr(runner, "STAGES", (first, added, stopping))
    state = RunState(mlflow_run_id="none")
    ctx = RunContext(None, None, None, None, None, BudgetLedger(BudgetConfig()), state, tmp_path, None)
    run = runner.Runner(ctx, tracker=None)
    ctx.iter_dir(0).mkdir()
    run.metrics = {"iteration": 0}

    assert run.stage(0, first, {}).tables["rows"] == rows
    on_disk = json.loads((tmp_path / "state.json").read_text())
    assert on_disk["stages_done"] == ["first"] and on_disk["partial_metrics"]["m/first"] == 1.0
    assert on_disk["partial_metrics"]["time/first_s"] >= 0
    again = run.stage(0, first, {})  # done: read back from iter_00/rows.parquet, not run
    assert first.calls == [0] and again.tables["rows"] == rows

    assert run.stage(0, stopping, {}).stop_reason == "budget exhausted: test"
    assert state.stages_done == ["first"]  # a stop is not a finished stage

    state.stages_done.append("stopping")  # a run directory that finished a later stage before "added" existed
    assert run.stage(0, added, {}).tables == {} and added.calls == []

    wrong = _stage("wrong", ("declared",), StageResult({"other": rows}))
    monkeypatch.setattr(runner, "STAGES", (wrong,))
    with pytest.raises(RuntimeError, match="stage wrong returned tables"):
        run.stage(0, wrong, {})
