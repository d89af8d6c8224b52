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


def worker_env_vars() -> dict[str, str]:
    """Environment variables every Ray worker of the run gets: VLLM_CACHE_ROOT =
    <loopdistill.models.cache_dir()>/vllm, so vLLM's torch.compile artefacts live beside the converted
    models and a second run (or a second pod with the cache directory on a volume) reuses them
    instead of compiling again; left out when the driver's environment sets VLLM_CACHE_ROOT (the
    user's choice stands: local workers inherit it, a cluster's pods or job set it themselves).
    The driver's cache path is used on every node (the cluster manifests mount the same volume at
    the same path on every pod)."""
    from loopdistill.models import cache_dir

    if os.environ.get("VLLM_CACHE_ROOT"):
        return {}
    return {"VLLM_CACHE_ROOT": str(cache_dir() / "vllm")}


def init_ray(config: RunConfig, run_dir: Optional[Path] = None, verbose: bool = True) -> None:
    """Connect to `ray.address` or $RAY_ADDRESS when set, else start local Ray; either way the job's
    workers get `worker_env_vars()`.

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
    env_vars = worker_env_vars()
    runtime_env = {"env_vars": env_vars} if env_vars else None
    if address:
        ray.init(address=address, log_to_driver=verbose, runtime_env=runtime_env)
        return
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    cpus = config.ray.num_cpus or max(os.cpu_count() or 1, int(-(-logical_cpus_needed(config) // 1)))
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=verbose,
             runtime_env=runtime_env)


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
