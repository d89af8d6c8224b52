"""Bad input through the command line: a clear message naming the culprit, exit code 2, no run started."""
from pathlib import Path

import pytest

from drivers.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


@pytest.fixture
def ray_starts(monkeypatch) -> list:
    """Calls of drivers.ray_setup.init_ray (which starts or joins Ray before any actor), recorded and
    passed through. "No Ray started" is read from here rather than from ray.is_initialized(): an
    earlier test of the same pytest process may have left its session's Ray running."""
    import drivers.ray_setup as ray_setup

    calls, real = [], ray_setup.init_ray

    def recording(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(ray_setup, "init_ray", recording)
    return calls


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
    from loopdistill.tasks import DataError, Splits, get_task

    config = load_config(QUICKSTART, ["task.name=game24", "task.max_hops=null", "task.opposite_distractor=null"])
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


# --- resume, interrupt, run directories, settings that must fit the model -------------------------
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402


def _run_dir_with(tmp_path, state_text=None, config_text=None) -> Path:
    """A run directory as `run` leaves it (config.json, state.json), with either file replaceable."""
    from drivers.checkpoint import RunState
    from loopdistill.config import dump_config, load_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(config_text if config_text is not None else dump_config(load_config(QUICKSTART)))
    RunState(mlflow_run_id="0" * 32).save(run_dir)
    if state_text is not None:
        (run_dir / "state.json").write_text(state_text)
    return run_dir


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_dir", "no such directory"),
        ("not_a_run", "state.json"),
        ("corrupt_config", "config.json is unreadable"),
        ("config_not_a_mapping", "config.json is unreadable"),
        ("corrupt_state", "state.json is unreadable"),
        ("state_with_wrong_fields", "state.json is unreadable"),
        ("config_with_bad_field", "trainer.epochs"),
    ],
)
def test_every_bad_resume_exits_2_with_one_line(tmp_path, capsys, case, expected, ray_starts):

    run_dir = {
        "missing_dir": lambda: tmp_path / "nope",
        "not_a_run": lambda: tmp_path,
        "corrupt_config": lambda: _run_dir_with(tmp_path, config_text='{"task": {"name": "game24"'),
        "config_not_a_mapping": lambda: _run_dir_with(tmp_path, config_text="[1, 2]"),
        "corrupt_state": lambda: _run_dir_with(tmp_path, state_text="{not json"),
        "state_with_wrong_fields": lambda: _run_dir_with(tmp_path, state_text='{"iteration": 1}'),
        "config_with_bad_field": lambda: _run_dir_with(tmp_path, config_text='{"task": {"name": "game24"}, "trainer": {"epochs": "many"}}'),
    }[case]()
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == (1 if case != "config_with_bad_field" else 2)  # header + the field
    assert not ray_starts


def test_resume_of_a_run_missing_from_the_mlflow_store_exits_2(tmp_path, capsys, ray_starts):
    """config.json names a store (here: a relative output_dir resolved from another folder) that does
    not hold the state's MLflow run: one line, exit 2, no Ray."""
    from loopdistill.config import dump_config, load_config

    config = load_config(QUICKSTART, ["student.model.path=tiny-random-llama", "teacher.model.path=tiny-random-llama",
                                      f"tracking.output_dir={tmp_path}/store"])
    run_dir = _run_dir_with(tmp_path, config_text=dump_config(config))
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "0" * 32 in err and "not in the store" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not ray_starts


def test_resume_override_of_a_setting_that_must_not_change_is_named(tmp_path, capsys):
    run_dir = _run_dir_with(tmp_path)
    assert main(["run", "--resume", str(run_dir), "loop.iterations=5", "trainer.learning_rate=0.1"]) == 2
    err = capsys.readouterr().err
    assert "trainer.learning_rate" in err and "cannot change on resume" in err and "loop.iterations" in err
    from loopdistill.config import load_config

    assert json.loads((run_dir / "config.json").read_text())["loop"]["iterations"] == load_config(QUICKSTART).loop.iterations  # untouched


def test_run_directories_of_the_same_second_do_not_collide(tmp_path, monkeypatch):
    from drivers import loop
    from loopdistill.config import load_config

    monkeypatch.setattr(loop.time, "strftime", lambda fmt, t=None: "20260101-000000")
    config = load_config(QUICKSTART, [f"tracking.output_dir={tmp_path}"])
    dirs = [loop.make_run_dir(config) for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() for d in dirs)
    assert dirs[0].name == "prontoqa-loss_high-s0-20260101-000000" or dirs[0].name.endswith("-s0-20260101-000000")
    assert [d.name[len(dirs[0].name):] for d in dirs] == ["", "-2", "-3"]


@pytest.mark.parametrize(
    "overrides, field, reason",
    [
        (["teacher.engine=vllm", "teacher.vllm.tensor_parallel_size=3"], "teacher.vllm.tensor_parallel_size", "does not divide the 4 attention heads"),
        (["student.engine=vllm", "student.vllm.tensor_parallel_size=8"], "student.vllm.tensor_parallel_size", "does not divide the 4 attention heads"),
        (["student.engine=vllm", "trainer.lora_rank=32", "student.vllm.max_lora_rank=16"], "trainer.lora_rank", "exceeds student.vllm.max_lora_rank=16"),
    ],
)
def test_settings_that_do_not_fit_the_model_fail_before_any_actor(tmp_path, capsys, shared_data, overrides, field, reason, ray_starts):
    """tiny-random-llama has 4 attention heads."""
    base = ["student.model.path=tiny-random-llama", "teacher.model.path=tiny-random-llama", f"tracking.output_dir={tmp_path}/runs"]
    assert main(["run", QUICKSTART, *base, *overrides]) == 2
    err = capsys.readouterr().err
    assert field in err and reason in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() and not ray_starts


def _tiny_run_config(tmp_path, shared_data) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from loop_helpers import tiny_config

    cfg = tiny_config(tmp_path, shared_data, "interrupt", ray={"num_cpus": 4}, loop={"iterations": 2, "seeds_per_iteration": 2})
    cfg["trainer"]["epochs"] = 3
    path = tmp_path / "interrupt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_ctrl_c_then_resume_then_resume_of_the_finished_run(tmp_path, shared_data, capsys, ray_starts):
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during iteration 0: exit
    130, one line naming the resume command, the MLflow run KILLED. The resume (with a safe
    override) finishes the run; resuming the finished run starts nothing and returns at once."""
    from mlflow.tracking import MlflowClient

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "drivers.cli", "run", str(_tiny_run_config(tmp_path, shared_data))], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 300
    state_file = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "interrupt").glob("*/state.json"))
        if found and json.loads(found[0].read_text() or "{}").get("baseline_done"):
            state_file = found[0]
            break
        time.sleep(0.2)
    assert state_file is not None, "the run did not reach iteration 0"
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    run_dir = state_file.parent
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"interrupted; continue with: loopdistill run --resume {run_dir}"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run_id = json.loads(state_file.read_text())["mlflow_run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = subprocess.run([sys.executable, "-m", "drivers.cli", "run", "--resume", str(run_dir), "budget.usd=5"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert client.get_run(run_id).data.tags["resume_override.budget.usd"] == "5"
    assert json.loads((run_dir / "config.json").read_text())["budget"]["usd"] == 5
    assert json.loads((run_dir / "summary.json").read_text())["iterations_completed"] == 2

    assert main(["run", "--resume", str(run_dir)]) == 0
    assert not ray_starts  # no Ray, so no actor: the finished run is returned as it is
    assert json.loads(capsys.readouterr().out.split("\nMLflow run")[0])["stop_reason"] == "completed"


def test_sigterm_then_resume(tmp_path, shared_data):
    """SIGTERM to the driver process (what `kill PID` and a Kubernetes pod deletion send) after a stage
    of iteration 0 is done: exit 143, one line naming the resume command, the MLflow run KILLED and
    tagged SIGTERM, state.json keeping every finished stage. The resume finishes the run without
    redoing the finished stages (their tables are not rewritten)."""
    from mlflow.tracking import MlflowClient

    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "drivers.cli", "run", str(_tiny_run_config(tmp_path, shared_data))], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline, state_file, seen = time.time() + 300, None, None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "interrupt").glob("*/state.json"))
        state = json.loads(found[0].read_text() or "{}") if found else {}
        if state.get("iteration") == 0 and "generate" in state.get("stages_done", []):
            state_file, seen = found[0], state
            break
        time.sleep(0.1)
    assert state_file is not None, "the run did not finish a stage of iteration 0"
    run_dir = state_file.parent
    kept = {p.name: p.stat().st_mtime_ns for p in (run_dir / "iter_00").glob("*.parquet")}
    assert "selected.parquet" in kept
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1] == f"terminated (SIGTERM); continue with: loopdistill run --resume {run_dir}"
    after = json.loads(state_file.read_text())
    assert after["baseline_done"] and after["iteration"] == 0
    assert after["stages_done"][: len(seen["stages_done"])] == seen["stages_done"]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(after["mlflow_run_id"])
    assert run.info.status == "KILLED" and run.data.tags["interrupted_by"] == "SIGTERM"

    resumed = subprocess.run([sys.executable, "-m", "drivers.cli", "run", "--resume", str(run_dir)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert client.get_run(after["mlflow_run_id"]).info.status == "FINISHED"
    assert json.loads((run_dir / "summary.json").read_text())["iterations_completed"] == 2
    assert {name: (run_dir / "iter_00" / name).stat().st_mtime_ns for name in kept} == kept


class _SignalsInDel:
    """Sends SIGTERM to its own process from `__del__`, where Python swallows exceptions (as it does in
    weakref callbacks, e.g. SQLAlchemy's under MLflow): the handler runs there."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100_000):  # the handler runs at one of these bytecodes, inside __del__
            pass


def test_sigterm_is_scoped_and_survives_a_swallowing_callback(capsys):
    """Inside stop_on_sigterm SIGTERM raises Terminated in the main thread, also when the signal first
    lands in a `__del__` that swallows it; the previous handler and unraisable hook come back after."""
    from drivers.checkpoint import Terminated, sigterm_received, stop_on_sigterm

    handler, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    with pytest.raises(Terminated), stop_on_sigterm():
        obj = _SignalsInDel()
        del obj
        time.sleep(10)  # interrupted: the signal is delivered again after __del__
    assert sigterm_received()
    assert signal.getsignal(signal.SIGTERM) is handler and sys.unraisablehook is hook
    assert "Exception ignored" not in capsys.readouterr().err
