"""A data-efficiency study: every (strategy, replicate seed) of one config as a child run of the loop,
run concurrently on the Ray cluster, under one MLflow parent run, then analysed (drivers/study_report.py).

    loopdistill study CONFIG --strategies random loss_high --replicates 3 [section.key=value ...]
    loopdistill study --resume STUDY_DIR            # or the first command again: same name, same dir
    loopdistill study-report STUDY_DIR

Replicates: replicate r runs with seed s = loop.seed + r, set as loop.seed (selection, softmax sampling,
the teacher's sampling seeds) and trainer.seed (LoRA initialisation, data order). task.seed is NOT
changed: every child has the same seed pool, validation and test split, so all curves are measured on
the same questions (a paired design; the replicate spread is that of selection, generation and training).

Each child is one Ray task (its own worker process, `max_calls=1`) that calls `drivers.loop.run` (or
`resume`) of its config. Inside a Ray worker `ray.is_initialized()` holds, so the loop's `init_ray`
connects nothing new and the child's actors are scheduled in the same cluster with the resources its
config declares (student.num_gpus, trainer.num_gpus_per_rank, ... : fractions let several small runs
share a GPU). The task itself reserves no CPU or GPU. To keep half-placed runs from starving each
other (every run holding its student while no GPU is left for any trainer), the study starts at most
as many children at once as the cluster's CPUs and GPUs hold completely (`runs_that_fit`).

State lives in `<tracking.output_dir>/study-<name>/`: study.json (the resolved base config, the
children, the parent MLflow run) and `runs/<child>/` with each child's run directory. A child whose
run directory has a stop reason in state.json is done and never rerun; one with a state.json but no
stop reason was interrupted and is resumed (drivers.loop.resume, same MLflow run); one without a run
directory starts. Child MLflow runs carry the tag mlflow.parentRunId of the study's parent run.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import ray

from drivers.actor_group import describe_resources, resource_specs
from drivers.study_report import find_run_dir, write_report
from loopdistill.config import ConfigError, RunConfig, build_config, dump_config, load_config
from loopdistill.secrets import REDACTED, redact

log = logging.getLogger("loopdistill")
STUDY_FILE = "study.json"


class StudyIncomplete(RuntimeError):
    """Some child runs failed; the others' results are kept and `--resume STUDY_DIR` retries them."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the study; its running children were cancelled where they stood and
    `--resume study_dir` continues them."""

    def __init__(self, study_dir: str):
        super().__init__(study_dir)
        self.study_dir = study_dir


@dataclass
class StudyResult:
    """What one invocation of the study did. children: {name: status} with status "skipped (done)",
    "ran", "resumed" or "failed: <error>"; report: path of report.md (None when no child has data)."""

    study_dir: str
    parent_run_id: str
    children: dict[str, str]
    report: Optional[str]


def child_name(task: str, strategy: str, seed: int) -> str:
    return f"{task}-{strategy}-s{seed}"


def study_dir_of(config: RunConfig, name: str) -> Path:
    return Path(config.tracking.output_dir).resolve() / f"study-{name}"


def child_config(base: RunConfig, strategy: str, seed: int, study_dir: Path, uri: str, parent_run_id: str) -> RunConfig:
    """The base config with the child's strategy and replicate seed (loop.seed = trainer.seed = seed;
    task.seed untouched), its run directory under study_dir/runs/<name>/, the study's MLflow store and
    the parent run.

    Raises:
        ConfigError: the strategy does not fit the config (e.g. a forward-pass strategy on vLLM).
    """
    data = base.model_dump(mode="json")
    name = child_name(base.task.name, strategy, seed)
    data["loop"].update(strategy=strategy, seed=seed)
    data["trainer"]["seed"] = seed
    data["tracking"].update(run_name=name, output_dir=str(study_dir / "runs" / name), tracking_uri=uri, parent_run_id=parent_run_id)
    return build_config(data, f"study child {name}")


def run_demand(config: RunConfig) -> list[tuple[float, float]]:
    """(CPUs, GPUs) of each actor one run starts, from the run's resource specs
    (drivers.actor_group.resource_specs: teacher replicas, rate limiter, student, trainer ranks, reward
    model)."""
    return [one for spec in resource_specs(config).values() for one in spec.demand()]


def runs_that_fit(demands: list[list[tuple[float, float]]], cpus: float, gpus: float) -> int:
    """How many of the runs (in order) fit the cluster at once, every actor placed: CPUs summed, GPUs
    packed first-fit decreasing into `gpus` devices of capacity 1 (whole-GPU actors take empty devices).
    An estimate of Ray's own placement, which also packs fractions onto single devices."""
    devices = [1.0] * int(gpus + 1e-9)
    used_cpu, fit = 0.0, 0
    for demand in demands:
        need_cpu = sum(c for c, _ in demand)
        trial = list(devices)
        ok = used_cpu + need_cpu <= cpus + 1e-9
        for g in sorted((g for _, g in demand if g > 0), reverse=True):
            if not ok:
                break
            if g >= 1:
                empty = [i for i, free in enumerate(trial) if free >= 1 - 1e-9][: math.ceil(g)]
                ok = len(empty) == math.ceil(g)
                for i in empty:
                    trial[i] = 0.0
            else:
                slot = next((i for i, free in enumerate(trial) if free >= g - 1e-9), None)
                ok = slot is not None
                if ok:
                    trial[slot] -= g
        if not ok:
            break
        devices, used_cpu, fit = trial, used_cpu + need_cpu, fit + 1
    return fit


@ray.remote(num_cpus=0, max_calls=1, max_retries=0)
def _child_task(config_data: dict, run_dir: Optional[str], record_path: str) -> dict:
    """One child run in its own worker process: `run` of the config, or `resume` of its run directory.
    Appends the attempt (mode, start time) to the child's child.json when it starts and adds its wall
    seconds and outcome when it ends; an attempt killed with its worker (Ctrl-C's forced cancel, `ray
    stop`, a lost machine) keeps no wall_s, and the report shows that child's wall time as a lower bound."""
    from drivers.loop import resume, run
    from drivers.progress import setup_logging

    setup_logging(False)
    record = Path(record_path)
    started = time.time()
    attempt = {"mode": "resume" if run_dir else "run", "started": started}
    data = json.loads(record.read_text()) if record.is_file() else {"attempts": []}
    data["attempts"].append(attempt)
    record.write_text(json.dumps(data, indent=2))
    try:
        summary = resume(run_dir) if run_dir else run(build_config(config_data), verbose=False)
        attempt["outcome"] = summary.stop_reason
        return {"run_dir": summary.run_dir, "mlflow_run_id": summary.mlflow_run_id, "stop_reason": summary.stop_reason,
                "iterations_completed": summary.iterations_completed}
    except BaseException as err:
        attempt["outcome"] = f"failed: {type(err).__name__}: {(str(err).splitlines() or [''])[0]}"[:500]
        raise
    finally:
        attempt["wall_s"] = time.time() - started
        data["attempts"][-1] = attempt  # only this worker writes this child's record while it runs
        record.write_text(json.dumps(data, indent=2))


def child_status(study_dir: Path, name: str) -> tuple[str, Optional[Path]]:
    """("done" | "interrupted" | "new", run directory). Read from the child's own state.json."""
    run_dir = find_run_dir(study_dir, name)
    if run_dir is None:
        return "new", None
    state = json.loads((run_dir / "state.json").read_text())
    return ("done" if state.get("stop_reason") else "interrupted"), run_dir


def _load_spec(study_dir: Path) -> dict:
    path = study_dir / STUDY_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a study directory ({str(err).splitlines()[0]})") from None


def prepare(config_path: Optional[str], strategies: list[str], replicates: int, overrides: list[str],
            name: Optional[str] = None, resume_dir: Optional[str] = None) -> tuple[Path, dict, RunConfig]:
    """Resolve the study: its directory, its spec (study.json content) and the base config. A new
    study, or the same command again (same name: the recorded config must be equal; strategies and
    replicates given now are added to the recorded children), or `resume_dir`.

    Raises:
        ConfigError: bad config/strategy, no strategies, replicates < 1, or a name already used by a
            study with another config.
    """
    if resume_dir:
        study_dir = Path(resume_dir).resolve()
        spec = _load_spec(study_dir)
        base = build_config(spec["config"], str(study_dir / STUDY_FILE))
        if REDACTED in base.teacher.openai.base_url or REDACTED in (base.tracking.tracking_uri or ""):
            # study.json never holds credentials: only the original command (config + overrides) has them
            raise ConfigError(f"{study_dir}: credentials in a URL were not stored; continue it with the original "
                              "`loopdistill study CONFIG ... [overrides]` command instead of --resume")
        return study_dir, spec, base
    if not config_path:
        raise ConfigError("give a config file, or --resume STUDY_DIR")
    if not strategies:
        raise ConfigError("--strategies: give at least one strategy")
    if replicates < 1:
        raise ConfigError(f"--replicates must be >= 1, got {replicates}")
    base = load_config(config_path, overrides)
    name = name or Path(config_path).stem
    study_dir = study_dir_of(base, name)
    seeds = [base.loop.seed + r for r in range(replicates)]
    config_json = json.loads(dump_config(base))
    spec = {"name": name, "config_path": str(config_path), "overrides": [redact(o) for o in overrides], "config": config_json,
            "children": {}}
    if (study_dir / STUDY_FILE).is_file():
        spec = _load_spec(study_dir)
        if spec["config"] != config_json:
            differ = sorted(k for k in set(spec["config"]) | set(config_json) if spec["config"].get(k) != config_json.get(k))
            raise ConfigError(f"{study_dir} holds a study of another config (sections differ: {differ}); "
                              f"give --name NEW, or --resume {study_dir} to continue it as it is")
    for strategy in strategies:
        for seed in seeds:
            spec["children"].setdefault(child_name(base.task.name, strategy, seed), {"strategy": strategy, "seed": seed})
    return study_dir, spec, base


def run_study(config_path: Optional[str], strategies: list[str], replicates: int = 3, overrides: Optional[list[str]] = None,
              name: Optional[str] = None, resume_dir: Optional[str] = None, max_concurrent: Optional[int] = None,
              env_vars: Optional[dict[str, str]] = None) -> StudyResult:
    """Run (or continue) a study; see the module docstring. Children that fail are recorded and the
    others go on; the report is written from whatever has data.

    Args:
        config_path: YAML run config (None with resume_dir).
        strategies: selection strategies (drivers.strategies.STRATEGIES names).
        replicates: seeds per strategy (loop.seed + 0 .. replicates - 1).
        overrides: `section.key=value` for every child.
        name: study name (default: the config file's stem); the directory is <output_dir>/study-<name>.
        resume_dir: continue this study directory with its recorded config and children.
        max_concurrent: at most this many children at once (default: as many as the cluster holds).
        env_vars: environment variables of the children's processes and actors (Ray runtime_env).

    Raises:
        ConfigError: as `prepare`, or a child config that does not validate (before any child starts).
        StudyIncomplete: after the report, when a child failed (its error is in the result line and
            its MLflow run); `resume_dir` retries it.
    """
    from drivers.ray_setup import init_ray
    from drivers.tracking import Tracker, tracking_uri

    study_dir, spec, base = prepare(config_path, strategies, replicates, overrides or [], name, resume_dir)
    uri = tracking_uri(base.tracking)
    statuses: dict[str, str] = {}
    for c in spec["children"].values():  # a strategy that does not fit the config stops before any MLflow run
        child_config(base, c["strategy"], c["seed"], study_dir, uri, spec.get("parent_run_id") or "pending")
    study_dir.mkdir(parents=True, exist_ok=True)
    with Tracker(base, study_dir, f"study-{spec['name']}", run_id=spec.get("parent_run_id")) as tracker:
        spec["parent_run_id"], spec["tracking_uri"] = tracker.run_id, redact(uri)  # the file never holds credentials
        children = {n: child_config(base, c["strategy"], c["seed"], study_dir, uri, tracker.run_id) for n, c in spec["children"].items()}
        (study_dir / STUDY_FILE).write_text(json.dumps(spec, indent=2))
        tracker.set_tags({"study": spec["name"], "study_dir": str(study_dir), "study.children": str(len(children)),
                          "study.strategies": ",".join(dict.fromkeys(c["strategy"] for c in spec["children"].values()))})
        init_ray(base)
        todo = []
        for n in children:
            status, run_dir = child_status(study_dir, n)
            if status == "done":
                statuses[n] = "skipped (done)"
            else:
                todo.append((n, run_dir))
        cluster = ray.cluster_resources()
        fit = runs_that_fit([run_demand(children[n]) for n, _ in todo], cluster.get("CPU", 0), cluster.get("GPU", 0))
        if todo and fit == 0:
            needs = describe_resources(resource_specs(children[todo[0][0]]))
            raise ConfigError(f"one child run needs {needs} (per actor); the cluster has {cluster}")
        limit = min(fit, max_concurrent or fit)
        log.info("study %s: %d children, %d to run, up to %d at once (%s)", spec["name"], len(children), len(todo), limit, study_dir)
        options = {"runtime_env": {"env_vars": dict(env_vars)}} if env_vars else {}
        running: dict = {}
        try:
            _drain(todo, running, limit, children, study_dir, options, statuses, spec["name"])
        except KeyboardInterrupt:
            for ref in running:  # a child's actors belong to its worker: they go with it
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # the signal may have reached Ray's own processes too
                    pass
            raise StudyInterrupted(str(study_dir)) from None
        report = report_into(study_dir, spec, tracker)
        failed = sorted(n for n, s in statuses.items() if s.startswith("failed"))
        tracker.set_tags({"study.failed_children": ",".join(failed) or "none"})
        if failed:
            raise StudyIncomplete(f"{len(failed)} child run(s) failed: {', '.join(failed)}; report from the others in {report}; "
                                  f"retry with: loopdistill study --resume {study_dir}")
    return StudyResult(str(study_dir), spec["parent_run_id"], statuses, str(report) if report else None)


def _drain(todo: list, running: dict, limit: int, children: dict, study_dir: Path, options: dict, statuses: dict, name: str) -> None:
    """Start children (at most `limit` at once) until all have ended; record each one's status."""
    while todo or running:
        while todo and len(running) < limit:
            n, run_dir = todo.pop(0)
            record = study_dir / "runs" / n / "child.json"
            record.parent.mkdir(parents=True, exist_ok=True)
            ref = _child_task.options(name=n, **options).remote(children[n].model_dump(mode="json"), str(run_dir) if run_dir else None, str(record))
            running[ref] = (n, "resumed" if run_dir else "ran")
        done, _ = ray.wait(list(running), num_returns=1)
        n, mode = running.pop(done[0])
        try:
            result = ray.get(done[0])
            statuses[n] = mode
            log.info("study %s: %s %s (%s)", name, n, mode, result["stop_reason"])
        except Exception as err:  # one failed child must not cost the others' runs
            cause = getattr(err, "cause", None) or err
            statuses[n] = f"failed: {type(cause).__name__}: {cause}"[:300]
            log.error("study %s: %s %s", name, n, statuses[n])


def report_into(study_dir: Path, spec: dict, tracker=None) -> Optional[Path]:
    """Write report.md + figures and, given the parent run's tracker, log them to it. None when no
    child has data yet."""
    try:
        report, figures = write_report(study_dir, spec["name"], spec["children"])
    except ValueError as err:
        log.warning("study %s: no report: %s", spec["name"], err)
        return None
    if tracker is not None:
        tracker.log_artifact(report)
        for figure in figures:
            tracker.log_artifact(figure, "figures")
    return report


def regenerate_report(study_dir: str) -> Path:
    """`loopdistill study-report STUDY_DIR`: rewrite report.md and figures from the children's run
    directories, and log them to the parent run when its MLflow store is reachable from here.

    Raises:
        ConfigError: not a study directory, or no child has data.
    """
    from mlflow.tracking import MlflowClient

    path = Path(study_dir).resolve()
    spec = _load_spec(path)
    report = report_into(path, spec)
    if report is None:
        raise ConfigError(f"{path}: no child run has finished an evaluation yet")
    uri = spec.get("tracking_uri", "")
    if spec.get("parent_run_id") and (not uri.startswith("sqlite:///") or Path(uri[len("sqlite:///"):]).is_file()):
        try:
            client = MlflowClient(uri)
            client.log_artifact(spec["parent_run_id"], str(report))
            for figure in sorted((path / "figures").glob("*.png")):
                client.log_artifact(spec["parent_run_id"], str(figure), "figures")
        except Exception as err:  # the files are written; the store may be another machine's
            log.warning("report not logged to MLflow run %s: %s", spec["parent_run_id"], err)
    return report
