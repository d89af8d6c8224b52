"""ActorGroup / ResourceSpec on the session's local Ray (4 logical CPUs): what Ray reports the actors
hold and how they restart, seen from inside the actors and from Ray's placement-group table."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest
import ray

from actors.group import ActorGroup, ResourceSpec
from loopdistill.config import build_config
from loop_helpers import tiny_config

# Ray's workers cannot import this test module by name: ship Probe to them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Probe:
    """A small actor that reports what its process was given."""

    def __init__(self, marker_dir: str | None = None):
        self.marker_dir = marker_dir

    def pid(self) -> int:
        return os.getpid()

    def die_once(self) -> int:
        """End this process the first time it is called across restarts (a marker file remembers)."""
        marker = os.path.join(self.marker_dir, "died")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(1)
        return os.getpid()


def wait_for(handle, state: str, restarts: int, timeout_s: float = 120.0) -> None:
    """Block until Ray's actor table (GCS) shows the actor in `state` after `restarts` restarts:
    ray.kill is asynchronous, so a call sent right after it may still reach the old process."""
    from ray._private.state import actors as actor_table  # the GCS view; ray.util.state needs a dashboard

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = actor_table(handle._actor_id.hex())
        if info["State"] == state and info["NumRestarts"] == restarts:
            return
        time.sleep(0.1)
    raise AssertionError(f"actor not {state} after {restarts} restarts within {timeout_s} s: {info}")


def held(handle) -> tuple[dict, str | None, dict]:
    """(resources Ray assigned, placement group id, environment) seen inside the actor."""
    return ray.get(handle.__ray_call__.remote(
        lambda self: (ray.get_runtime_context().get_assigned_resources(),
                      ray.get_runtime_context().get_placement_group_id(), dict(os.environ))
    ))


def test_run_actors_hold_what_the_specs_declare(ray_local, shared_data, tmp_path, tiny_reward_model):
    """start_actors on a config with every role: resources.json lists the specs, and each actor
    holds its spec's resources (Ray's report inside the actor); trainer ranks sit in one PACK
    placement group with DS_ACCELERATOR=cpu; a killed teacher replica comes back as a new process."""
    from drivers.actor_group import RESOURCES_FILE, resource_specs, start_actors
    from drivers.study import run_demand

    config = build_config(tiny_config(
        tmp_path, shared_data, loop={"strategy": "reward_high"},
        teacher={"engine": "programmatic", "model": {"path": "tiny-random-llama"}, "num_replicas": 2, "num_cpus": 0.5},
        student={"model": {"path": "tiny-random-llama"}, "num_cpus": 0.5},
        trainer={"num_ranks": 1, "num_cpus_per_rank": 0.25, "max_restarts": 2},
        reward={"source": "model", "model": {"path": tiny_reward_model}, "num_cpus": 0.25},
    ))
    specs = resource_specs(config)
    assert list(specs) == ["teacher", "student", "trainer", "reward"]
    run_dir = tmp_path / "run_dir"
    run_dir.mkdir()
    actors = start_actors(config, run_dir)
    try:
        written = json.loads((run_dir / RESOURCES_FILE).read_text())
        assert written["teacher"]["replicas"] == 2 and written["teacher"]["num_cpus"] == 0.5
        assert written["trainer"]["placement"] == "pack" and written["trainer"]["group_restarts"] == 2
        handles = {"teacher": actors.teacher.replicas, "student": [actors.student], "trainer": actors.trainer.ranks,
                   "reward": [actors.reward]}
        seen = []
        for role, spec in specs.items():
            assert len(handles[role]) == spec.replicas, role
            for handle in handles[role]:
                resources, pg, env = held(handle)
                assert resources == {"CPU": written[role]["num_cpus"]}, role
                assert (pg is not None) == (role == "trainer"), role
                assert ("DS_ACCELERATOR" in env) == (role == "trainer"), role
                seen.append((resources.get("CPU", 0.0), resources.get("GPU", 0.0)))
        # The study sizes its concurrent runs by what the actors really hold.
        assert sorted(run_demand(config)) == sorted(seen)
        _, pg_id, env = held(actors.trainer.ranks[0])
        assert env["DS_ACCELERATOR"] == "cpu"
        table = ray.util.placement_group_table()[pg_id]
        assert table["strategy"] == "PACK" and list(table["bundles"].values()) == [{"CPU": 0.25}]

        replica = actors.teacher.replicas[0]
        before = ray.get(replica.__ray_call__.remote(lambda self: os.getpid()))
        ray.kill(replica, no_restart=False)  # teacher max_restarts defaults to 1
        wait_for(replica, "ALIVE", restarts=1)
        assert actors.teacher.count_tokens(["2 3 4 5"])[0] > 0  # answered by the restarted replica
        assert ray.get(replica.__ray_call__.remote(lambda self: os.getpid())) != before
    finally:
        actors.shutdown()
    assert ray.util.placement_group_table()[pg_id]["state"] == "REMOVED"


def test_dead_actor_restarts_as_often_as_the_spec_says(ray_local):
    group = ActorGroup(Probe, ResourceSpec("probe", replicas=2, num_cpus=0.25, max_restarts=1, max_task_retries=1),
                       [()] * 2)
    try:
        first = group.call_all("pid")
        ray.kill(group[0], no_restart=False)
        wait_for(group[0], "ALIVE", restarts=1)
        second = group.call_all("pid")
        assert second[0] != first[0] and second[1] == first[1]  # only the killed one is a new process
        ray.kill(group[0], no_restart=False)  # its one restart is used up
        wait_for(group[0], "DEAD", restarts=1)
        with pytest.raises(ray.exceptions.ActorDiedError):
            group.call_one("pid", index=0)
        assert group.call_one("pid", index=1) == first[1]
    finally:
        group.shutdown()
    never = ActorGroup(Probe, ResourceSpec("probe", num_cpus=0.25), [()])
    try:
        ray.kill(never[0], no_restart=False)
        wait_for(never[0], "DEAD", restarts=0)
        with pytest.raises(ray.exceptions.ActorDiedError):
            never.call_one("pid")
    finally:
        never.shutdown()


def test_group_restarts_the_whole_group_and_reruns_the_call(ray_local, tmp_path):
    """group_restarts=1: an actor dies inside the call, every member is replaced, on_start runs
    again, and the call's second run answers. With group_restarts=0 the death reaches the caller."""
    starts = []
    spec = ResourceSpec("ranks", replicas=2, num_cpus=0.25, placement="pack", group_restarts=1, ready_timeout_s=60)
    group = ActorGroup(Probe, spec, [(str(tmp_path),)] * 2, on_start=lambda g: starts.append(g.call_all("pid")))
    try:
        pids = group.call_with_restarts(lambda g: g.call_all("die_once"))
        assert len(starts) == 2 and set(pids) == set(starts[1]) and not set(pids) & set(starts[0])
    finally:
        group.shutdown()
    (tmp_path / "died").unlink()
    group = ActorGroup(Probe, ResourceSpec("ranks", num_cpus=0.25), [(str(tmp_path),)])
    try:
        with pytest.raises(ray.exceptions.ActorDiedError):
            group.call_with_restarts(lambda g: g.call_all("die_once"))
    finally:
        group.shutdown()


def test_unplaceable_bundles_time_out_naming_the_role(ray_local):
    spec = ResourceSpec("trainer", replicas=2, num_cpus=1, num_gpus=1, placement="pack", ready_timeout_s=2)
    before = {pg_id for pg_id, t in ray.util.placement_group_table().items() if t["state"] != "REMOVED"}
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"trainer: 2 bundles of \{'CPU': 1, 'GPU': 1\} \(placement pack\) "
                                           r"not placed within 2 s; cluster resources: .*CPU"):
        ActorGroup(Probe, spec, [()] * 2)
    assert time.monotonic() - start < 30
    after = {pg_id for pg_id, t in ray.util.placement_group_table().items() if t["state"] != "REMOVED"}
    assert after == before  # the half-made placement group was freed


def test_wait_ready_names_the_role_of_an_actor_that_cannot_start(ray_local):
    group = ActorGroup(Probe, ResourceSpec("student", num_cpus=64, ready_timeout_s=1), [()])
    try:
        with pytest.raises(TimeoutError, match=r"student: 1 of 1 actors not ready within 1 s \(each asks \{'CPU': 64\}\)"):
            group.wait_ready()
    finally:
        group.shutdown()
    ok = ActorGroup(Probe, ResourceSpec("teacher", num_cpus=0.25), [()])
    try:
        ok.wait_ready(timeout_s=60)
    finally:
        ok.shutdown()


def test_resource_spec_rejects_bad_fields_naming_the_role():
    with pytest.raises(ValueError, match="'teacher'.*replicas=0"):
        ResourceSpec("teacher", replicas=0)
    with pytest.raises(ValueError, match="'limiter'.*placement needs a bundle"):
        ResourceSpec("limiter", num_cpus=0, placement="pack")
    with pytest.raises(ValueError, match="'x'.*placement='ring'"):
        ResourceSpec("x", placement="ring")
    with pytest.raises(ValueError, match="2 argument tuples for 1 replicas"):
        ActorGroup(Probe, ResourceSpec("x"), [(), ()])
