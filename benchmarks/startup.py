"""Start-up seconds of a run: from a fresh local Ray to every actor of the config ready to take a call.

Each measurement is one child process that does what a run does before its first stage: load the
config, `drivers.ray_setup.init_ray`, `drivers.actor_group.start_actors`, then wait until every actor
(teacher replicas, student, trainer ranks, reward model) answers Ray's readiness call, i.e. its
constructor (model load, vLLM engine with torch.compile and CUDA graphs, the trainer's process group)
has returned. `--repo` points a child at another checkout (e.g. a `git worktree` of an older commit),
so the same script times "before" and "after" on the same machine; `--repeat 2` runs each twice in a
row: the first start is cold (no compile cache), the second reuses whatever the first left on disk.
The converted model (loopdistill.models cache) is made once before the first measurement and not
counted, so every child starts with it.

GPU (one H100), vLLM student + trainer as configs/gpu_1x.yaml:
    PYTHONPATH=. python benchmarks/startup.py configs/gpu_1x.yaml --repo /path/to/before --repo . --repeat 2
CPU, small:
    PYTHONPATH=. python benchmarks/startup.py configs/quickstart.yaml --repeat 1

Prints one JSON line per child ({"repo", "round", "ray_init_s", "start_actors_s", "ready_s",
"total_s"}) and a summary line with each repo's mean total seconds per round.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="start-up seconds of a run's actors")
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    parser.add_argument("--repo", action="append", default=None, help="checkout to time (repeatable; default: this one)")
    parser.add_argument("--repeat", type=int, default=2, help="starts per checkout, in a row (1st cold, then warm)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def child(config_path: str, overrides: list[str]) -> dict:
    """One start-up in this process (the checkout on sys.path); returns its phase seconds."""
    started = time.perf_counter()
    import ray

    from drivers.actor_group import start_actors
    from drivers.ray_setup import init_ray
    from loopdistill.config import load_config

    config = load_config(config_path, overrides)
    run_dir = Path(tempfile.mkdtemp(prefix="startup-"))
    t0 = time.perf_counter()
    init_ray(config, run_dir=run_dir, verbose=False)
    t1 = time.perf_counter()
    actors = start_actors(config, run_dir)
    t2 = time.perf_counter()
    handles = list(actors.teacher.replicas) + [actors.student] + list(actors.trainer.ranks)
    handles += [actors.reward] if actors.reward is not None else []
    ray.get([h.__ray_ready__.remote() for h in handles])
    t3 = time.perf_counter()
    actors.shutdown()
    ray.shutdown()
    return {"import_and_config_s": round(t0 - started, 2), "ray_init_s": round(t1 - t0, 2),
            "start_actors_s": round(t2 - t1, 2), "ready_s": round(t3 - t1, 2), "total_s": round(t3 - started, 2)}


def child_env(repo: str) -> dict:
    """The environment of a child in checkout `repo`: the checkout first on PYTHONPATH, then what it held."""
    paths = [repo] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def main() -> None:
    args = parse_args()
    if args.child:
        print("STARTUP " + json.dumps(child(args.config, args.overrides)), flush=True)
        return
    repos = [str(Path(r).resolve()) for r in (args.repo or ["."])]
    config = str(Path(args.config).resolve())
    # The converted model is shared by every start (made once, under a file lock); make it before timing.
    subprocess.run([sys.executable, "-c", "from loopdistill.config import load_config; from loopdistill.models import resolve_model;"
                    f"c = load_config({config!r}, {args.overrides!r}); resolve_model(c.student.model.path)"],
                   check=True, cwd=repos[-1], env=child_env(repos[-1]))
    results = []
    for repo in repos:
        for round_ in range(1, args.repeat + 1):
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), config, *args.overrides, "--child"],
                                  cwd=repo, env=child_env(repo), capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("STARTUP ")]
            if proc.returncode != 0 or not lines:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
                raise SystemExit(f"start-up in {repo} (round {round_}) failed with exit code {proc.returncode}")
            row = {"repo": repo, "round": round_, **json.loads(lines[-1][len("STARTUP "):])}
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {repo: {f"round_{r}_total_s": next(x["total_s"] for x in results if x["repo"] == repo and x["round"] == r)
                      for r in range(1, args.repeat + 1)} for repo in repos}
    print(json.dumps({"summary": summary, "config": args.config, "overrides": args.overrides,
                      "machine": platform.node(), "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
    main()
