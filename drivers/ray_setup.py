"""Connecting the driver to Ray: a running cluster (ray job submit, RAY_ADDRESS) or local Ray."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import ray

from loopdistill.config import RunConfig
from loopdistill.secrets import redact

REPO_ROOT = Path(__file__).resolve().parents[1]


def logical_cpus_needed(config: RunConfig) -> float:
    """CPUs the actors of one run reserve: the sum over its resource specs
    (drivers.actor_group.resource_specs: teacher replicas, rate limiter, student, trainer ranks, and
    the reward model when the strategy reads one)."""
    from drivers.actor_group import resource_specs

    return sum(cpus for spec in resource_specs(config).values() for cpus, _ in spec.demand())


def init_ray(config: RunConfig, run_dir: Optional[Path] = None, verbose: bool = True) -> None:
    """Connect to `ray.address` or $RAY_ADDRESS when set, else start local Ray.

    `verbose` False: the workers' output (library warnings) is not echoed on the driver's terminal;
    `collect_worker_logs` copies it into the run directory at the end.

    Local Ray gets max(cores, CPUs the actors reserve) logical CPUs: the loop's stages run one after
    another, so actors that reserve a CPU each can share a 2-core laptop without deadlocking on
    scheduling. Workers inherit PYTHONPATH with the checkout, so `python -m drivers.cli` works from a
    checkout without installing.
    """
    if ray.is_initialized():
        return
    address = config.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=verbose)
        return
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    cpus = config.ray.num_cpus or max(os.cpu_count() or 1, int(-(-logical_cpus_needed(config) // 1)))
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=verbose)


def collect_worker_logs(run_dir: Path, since: float) -> None:
    """Copy the Ray workers' stdout/stderr files written since `since` (epoch seconds) into
    `run_dir/worker_logs/`, URL credentials redacted (local Ray only: a cluster keeps them on its nodes)."""
    try:
        node = ray._private.worker.global_worker.node
        logs = Path(node.get_session_dir_path()) / "logs"
    except AttributeError:  # not connected, or a client connection
        return
    if not logs.is_dir():
        return
    target = run_dir / "worker_logs"
    for path in logs.glob("worker-*"):
        try:
            if path.stat().st_mtime >= since and path.stat().st_size > 0:
                target.mkdir(exist_ok=True)
                # Redacted on the way: a worker's traceback may name a URL with its credentials.
                (target / path.name).write_text(redact(path.read_text(errors="replace")))
        except OSError:  # a file Ray rotated away meanwhile
            continue
