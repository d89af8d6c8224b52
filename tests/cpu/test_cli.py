"""Bad input through the command line: a clear message naming the culprit, exit code 2, no run started."""
from pathlib import Path

from drivers.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def test_missing_data_file(tmp_path, capsys):
    code = main(["run", QUICKSTART, f"task.data_path={tmp_path}/missing.csv", f"tracking.output_dir={tmp_path}/runs"])
    assert code == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_strategy(tmp_path, capsys):
    assert main(["run", QUICKSTART, "loop.strategy=hardest"]) == 2
    err = capsys.readouterr().err
    assert "loop.strategy" in err and "loss_high" in err and "random" in err


def test_bad_value_type(capsys):
    assert main(["check-config", QUICKSTART, "trainer.epochs=many"]) == 2
    assert "trainer.epochs" in capsys.readouterr().err


def test_resume_without_state(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "state.json" in capsys.readouterr().err


def test_check_config_prints_the_resolved_config(capsys):
    assert main(["check-config", QUICKSTART, "loop.iterations=2"]) == 0
    assert '"iterations": 2' in capsys.readouterr().out


def test_model_path_that_does_not_load(tmp_path, capsys):
    bad = tmp_path / "not-a-model"
    bad.mkdir()
    code = main(["run", QUICKSTART, f"student.model.path={bad}", f"tracking.output_dir={tmp_path}/runs"])
    assert code == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_engine_lists_the_valid_ones(capsys):
    assert main(["check-config", QUICKSTART, "teacher.engine=gpt"]) == 2
    err = capsys.readouterr().err
    assert "teacher.engine" in err and "transformers" in err and "programmatic" in err


def test_empty_seed_pool_and_duplicate_ids_are_named(tmp_path, monkeypatch):
    import pytest

    from drivers.loop import load_splits
    from loopdistill.config import load_config
    from loopdistill.schemas import SEEDS, make_table
    from tasks import DataError, Splits, get_task

    config = load_config(QUICKSTART)
    row = {"id": "dup-1", "question": "q", "answer": "a", "reference": "1 2 3 4"}
    task = get_task("game24")
    monkeypatch.setattr(task, "load_splits", lambda *a: Splits(make_table(SEEDS, [row]), make_table(SEEDS, [row]), make_table(SEEDS, [])))
    with pytest.raises(DataError, match="duplicate ids.*dup-1"):
        load_splits(config)
    monkeypatch.setattr(task, "load_splits", lambda *a: Splits(make_table(SEEDS, []), make_table(SEEDS, [row]), make_table(SEEDS, [])))
    with pytest.raises(DataError, match="seed pool is empty"):
        load_splits(config)


def test_compare_checks_every_strategy_before_running_any(capsys):
    assert main(["compare", "--strategies", "loss_high,nope", QUICKSTART, "loop.iterations=1"]) == 2
    assert "unknown strategy 'nope'" in capsys.readouterr().err
