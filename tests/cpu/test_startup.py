"""Start-up of a run's actors on the session's local Ray: roles construct at the same time (seen from
inside the actors), a role that fails or cannot be scheduled is named and the others are stopped
(seen in Ray's actor and placement-group tables), and the workers of `init_ray` get vLLM's compile
cache under the loopdistill cache directory (read inside a Ray actor)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import ray

from actors.group import ActorGroup, ActorStartError, ResourceSpec, wait_all_ready
from loopdistill.config import build_config
from loop_helpers import tiny_config

REPO = Path(__file__).resolve().parents[2]

# Ray's workers cannot import this test module by name: ship the actor classes to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Rendezvous:
    """A test actor whose constructor records when it starts and ends (files in `marks`) and returns
    only once the files named in `waits_for` exist: constructors that ran one role after another
    could never meet, so a start that is not concurrent fails here instead of passing slowly."""

    def __init__(self, marks: str, name: str, waits_for: tuple[str, ...], timeout_s: float = 90.0):
        self.marks = Path(marks)
        self.mark(f"{name}.start")
        deadline = time.monotonic() + timeout_s
        for other in waits_for:
            while not (self.marks / other).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name}: {other} did not appear within {timeout_s} s")
                time.sleep(0.05)
        self.mark(f"{name}.end")

    def mark(self, what: str) -> None:
        """Write time.time() (seconds) to the file `what` (renamed into place: readers never see half)."""
        tmp = self.marks / f".{what}"
        tmp.write_text(repr(time.time()))
        os.replace(tmp, self.marks / what)


class Broken:
    def __init__(self):
        raise ValueError("weights file is corrupt")


def _marks(path: Path) -> dict[str, float]:
    return {p.name: float(p.read_text()) for p in path.iterdir() if not p.name.startswith(".")}


def test_roles_construct_concurrently_and_the_process_group_forms_while_others_load(ray_local, tmp_path):
    """Four roles started without waiting (as start_actors does), whose constructors can only return
    if they run at the same time: the teacher replicas wait for the student's constructor to start
    and for the trainer's on_start (its 'process group') to have run; the student waits for both
    teacher replicas and the reward model to start; the trainer ranks wait for the student and the
    reward model, created after them; the reward model waits for both ranks. A role that blocked the
    start of the next (the trainer's process group formed before the reward model is created) or an
    on_start run only after every role is ready would never meet the others."""
    marks = tmp_path / "marks"
    marks.mkdir()
    m = str(marks)
    spec = dict(num_cpus=0.25, ready_timeout_s=120)
    teacher = ActorGroup(Rendezvous, ResourceSpec("teacher", replicas=2, **spec),
                         [(m, f"teacher{i}", ("student.start", "trainer.setup")) for i in range(2)], wait=False)
    student = ActorGroup(Rendezvous, ResourceSpec("student", **spec),
                         [(m, "student", ("teacher0.start", "teacher1.start", "reward.start"))], wait=False)
    trainer = ActorGroup(Rendezvous, ResourceSpec("trainer", replicas=2, placement="pack", **spec),
                         [(m, f"rank{i}", ("student.start", "reward.start")) for i in range(2)],
                         on_start=lambda g: g.call_one("mark", "trainer.setup"), wait=False)
    reward = ActorGroup(Rendezvous, ResourceSpec("reward", **spec), [(m, "reward", ("rank0.start", "rank1.start"))],
                        wait=False)
    groups = {"teacher": teacher, "student": student, "trainer": trainer, "reward": reward}
    since = time.perf_counter()
    try:
        ready_s = wait_all_ready(groups, since=since)
        elapsed = time.perf_counter() - since
        seen = _marks(marks)
        assert set(ready_s) == set(groups)
        assert all(0 < s <= elapsed for s in ready_s.values())
        assert ready_s["trainer"] <= ready_s["teacher"]  # the teacher needed the trainer's setup

        def overlap(a: str, b: str) -> bool:
            return seen[f"{a}.start"] < seen[f"{b}.end"] and seen[f"{b}.start"] < seen[f"{a}.end"]

        # Constructor intervals measured inside the actors overlap across roles.
        assert all(overlap(f"teacher{i}", "student") and overlap(f"rank{i}", "reward") for i in range(2))
        assert seen["reward.start"] < seen["student.end"] and seen["student.start"] < min(seen["rank0.end"], seen["rank1.end"])
        # The trainer's on_start ran once its own ranks were up, inside the teacher's constructors.
        assert max(seen["rank0.end"], seen["rank1.end"]) < seen["trainer.setup"] < min(seen["teacher0.end"], seen["teacher1.end"])
    finally:
        for group in groups.values():
            group.shutdown()


def _new_actors(before: set[str], class_names: set[str]) -> dict[str, dict]:
    from ray._private.state import actors as actor_table  # the GCS view; ray.util.state needs a dashboard

    return {aid: info for aid, info in actor_table().items() if aid not in before and info["ActorClassName"] in class_names}


def test_a_constructor_that_raises_names_its_role_and_stops_the_other_roles(ray_local, shared_data, tmp_path):
    """start_actors with a reward model whose path does not exist: the error names the reward role
    and the tokenizer's path, and Ray's tables show every actor it started DEAD and the trainer's
    placement group REMOVED."""
    from ray._private.state import actors as actor_table

    from drivers.actor_group import start_actors

    missing = tmp_path / "no-reward-model"
    config = build_config(tiny_config(
        tmp_path, shared_data, loop={"strategy": "reward_high"},
        teacher={"engine": "programmatic", "model": {"path": "tiny-random-llama"}, "num_cpus": 0.25},
        student={"model": {"path": "tiny-random-llama"}, "num_cpus": 0.25},
        trainer={"num_ranks": 1, "num_cpus_per_rank": 0.25},
        reward={"source": "model", "model": {"path": str(missing)}, "num_cpus": 0.25},
    ))
    run_dir = tmp_path / "run_dir"
    run_dir.mkdir()
    classes = {"TeacherActor", "StudentScorerActor", "TrainerRankActor", "RewardModelActor"}
    before = set(actor_table())
    pgs_before = set(ray.util.placement_group_table())
    with pytest.raises(ActorStartError, match=rf"^reward: actor 0 of 1 failed to start: .*{missing.name}") as caught:
        start_actors(config, run_dir)
    assert caught.value.role == "reward"
    assert "\n" not in str(caught.value)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # ray.kill is asynchronous
        started = _new_actors(before, classes)
        if started and all(info["State"] == "DEAD" for info in started.values()):
            break
        time.sleep(0.2)
    assert {info["ActorClassName"] for info in started.values()} == classes
    assert all(info["State"] == "DEAD" for info in started.values()), {i["ActorClassName"]: i["State"] for i in started.values()}
    new_pgs = {pg: t for pg, t in ray.util.placement_group_table().items() if pg not in pgs_before}
    assert new_pgs and all(t["state"] == "REMOVED" for t in new_pgs.values())


def test_a_role_that_cannot_be_scheduled_times_out_naming_it(ray_local, tmp_path):
    """An actor asking for more CPUs than the cluster has, and a placement group that cannot be placed:
    each wait ends after the role's short ready_timeout_s with the role, what it asks and the cluster's
    resources named, while a role that could start did."""
    ok = ActorGroup(Rendezvous, ResourceSpec("teacher", num_cpus=0.25, ready_timeout_s=120), [(str(tmp_path), "unused", ())],
                    wait=False)
    huge = ActorGroup(Rendezvous, ResourceSpec("reward", num_cpus=64, ready_timeout_s=3), [(str(tmp_path), "unused", ())],
                      wait=False)
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=r"^reward: 1 of 1 actors \(each asks \{'CPU': 64\}\) not ready within 3 s; "
                                               r"cluster resources: .*CPU.*, free: "):
            wait_all_ready({"teacher": ok, "reward": huge})
        assert time.monotonic() - start < 60
    finally:
        huge.shutdown()
        ok.shutdown()
    pgs_before = {pg for pg, t in ray.util.placement_group_table().items() if t["state"] != "REMOVED"}
    unplaceable = ActorGroup(Rendezvous, ResourceSpec("trainer", replicas=2, num_cpus=1, num_gpus=1, placement="pack",
                                                      ready_timeout_s=2), [(str(tmp_path), "unused", ())] * 2, wait=False)
    try:
        with pytest.raises(TimeoutError, match=r"^trainer: 2 bundles of \{'CPU': 1, 'GPU': 1\} \(placement pack\) not placed "
                                               r"within 2 s; cluster resources: "):
            wait_all_ready({"trainer": unplaceable})
    finally:
        unplaceable.shutdown()
    assert {pg for pg, t in ray.util.placement_group_table().items() if t["state"] != "REMOVED"} == pgs_before


def test_wait_all_ready_names_a_raising_constructor_in_one_line(ray_local):
    broken = ActorGroup(Broken, ResourceSpec("student", num_cpus=0.25, max_restarts=1, ready_timeout_s=120), [()], wait=False)
    try:
        with pytest.raises(ActorStartError, match=r"^student: actor 0 of 1 failed to start: ValueError: weights file is corrupt$"):
            wait_all_ready({"student": broken})
    finally:
        broken.shutdown()


_CHILD = textwrap.dedent("""
    import json, os, sys
    import ray
    from actors.group import ActorGroup, ResourceSpec
    from drivers.ray_setup import init_ray
    from loopdistill.config import build_config

    class Env:
        def get(self, *names):
            return {n: os.environ.get(n) for n in names}

    config = build_config(json.loads(sys.argv[1]))
    seen = []
    for mine in (None, sys.argv[2]):  # first as the user left it, then with the user's own cache root
        if mine:
            os.environ["VLLM_CACHE_ROOT"] = mine
        init_ray(config, verbose=False)
        # An actor with its own environment (as the trainer's DS_ACCELERATOR) gets the job's too.
        group = ActorGroup(Env, ResourceSpec("probe", num_cpus=0, env_vars={"DS_ACCELERATOR": "cpu"}), [()])
        seen.append(group.call_one("get", "VLLM_CACHE_ROOT", "DS_ACCELERATOR"))
        group.shutdown()
        ray.shutdown()
    print("SEEN " + json.dumps(seen))
""")


def test_init_ray_puts_vllm_compile_cache_under_the_cache_dir_and_keeps_the_users(shared_data, tmp_path):
    """A fresh local Ray from init_ray (its own process: the session's Ray is started by a fixture):
    a Ray actor reads VLLM_CACHE_ROOT = $LOOPDISTILL_CACHE/vllm; with VLLM_CACHE_ROOT set by the user
    it reads the user's value."""
    config = tiny_config(tmp_path, shared_data, ray={"num_cpus": 1})
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CACHE_ROOT", "RAY_ADDRESS")}
    env.update(LOOPDISTILL_CACHE=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(config), str(tmp_path / "mine")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("SEEN "))[5:])
    assert seen == [{"VLLM_CACHE_ROOT": str(tmp_path / "cache" / "vllm"), "DS_ACCELERATOR": "cpu"},
                    {"VLLM_CACHE_ROOT": str(tmp_path / "mine"), "DS_ACCELERATOR": "cpu"}]


def test_a_run_logs_its_startup_seconds_at_step_0_and_in_run_log(ray_local, shared_data, tmp_path):
    """A one-iteration tiny run: the MLflow store holds startup/* at step 0 only (Ray, all actors,
    each role, the whole start-up until the first stage), consistent with each other, and run.log
    has the start-up line."""
    from mlflow.tracking import MlflowClient

    from drivers.loop import run

    config = build_config(tiny_config(tmp_path, shared_data, "startup", loop={"iterations": 1}))
    summary = run(config, verbose=False)
    client = MlflowClient(config.tracking.tracking_uri)
    logged = {k: client.get_metric_history(summary.mlflow_run_id, k)
              for k in client.get_run(summary.mlflow_run_id).data.metrics if k.startswith("startup/")}
    assert set(logged) == {f"startup/{k}_s" for k in ("ray_init", "actors", "teacher", "student", "trainer", "total")}
    assert all([m.step for m in history] == [0] for history in logged.values())
    s = {k.split("/")[1][:-2]: history[0].value for k, history in logged.items()}
    assert 0 < max(s["teacher"], s["student"], s["trainer"]) <= s["actors"]
    assert s["ray_init"] + s["actors"] <= s["total"]
    lines = [line for line in (Path(summary.run_dir) / "run.log").read_text().splitlines() if "start-up:" in line]
    assert len(lines) == 1 and f"actors_s {s['actors']:.1f}" in lines[0] and f"total_s {s['total']:.1f}" in lines[0]
