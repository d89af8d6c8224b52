"""The entry points of a run: `run(config)` starts one, `resume(run_dir)` continues one after its last
completed stage in the same MLflow run. Both load and check the data, start Ray and the actors, and
hand over to the runner (drivers/runner.py), which runs the stages of Algorithm 1 of Kessler et al.
2025 (arXiv 2512.00884, drivers/stages/) iteration by iteration.

An error in iteration t leaves everything finished intact (iter_NN/*.parquet, state.json; teacher
answers are cached and journaled as they arrive, so they are paid once).
"""
from __future__ import annotations

import json
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from drivers import decontamination
from drivers.actor_group import RESOURCES_FILE, preflight_teacher, start_actors, startup_metrics
from drivers.budget import LIMITS, BudgetLedger
from drivers.checkpoint import ResumeError, RunInterrupted, RunState, rearm_sigterm, sigterm_received
from drivers.context import make_context
from drivers.progress import RunProgress, attach_run_log, detach_run_log, final_table
from drivers.runner import Runner
from drivers.tracking import Tracker
from loopdistill.config import ConfigError, RunConfig, apply_overrides, build_config, dump_config
from loopdistill.secrets import REDACTED
from loopdistill.tasks import DataError, Splits, Task, get_task

log = logging.getLogger("loopdistill")


@dataclass
class RunSummary:
    """What a finished (or budget-stopped) run produced."""

    run_dir: str
    mlflow_run_id: str
    iterations_completed: int
    stop_reason: str
    history: list[dict] = field(default_factory=list)


# Settings `run --resume RUN_DIR key=value` may change: how far the run goes, what it may spend, where
# and how it runs. Everything else (task, models, strategy, trainer, prompts) would make the resumed run
# a different experiment from its finished part, so changing it is an error naming the key.
RESUMABLE_OVERRIDES = (
    "loop.iterations", "loop.fidelity_metrics", "budget.*", "ray.*",
    "teacher.openai.base_url", "teacher.openai.api_key_env", "teacher.openai.max_concurrency",
    "teacher.openai.requests_per_minute", "teacher.openai.tokens_per_minute", "teacher.openai.max_retries",
    "teacher.openai.backoff_s", "teacher.openai.max_backoff_s", "teacher.openai.timeout_s", "teacher.openai.preflight",
    "teacher.num_replicas", "teacher.num_cpus", "teacher.num_gpus", "teacher.max_restarts", "teacher.batch_size",
    "student.num_cpus", "student.num_gpus", "student.max_restarts", "student.batch_size",
    "trainer.num_cpus_per_rank", "trainer.max_restarts",
)


def make_run_dir(config: RunConfig) -> Path:
    """<output_dir>/<name>-<UTC timestamp>, name = tracking.run_name or <task>-<strategy>-s<seed>.
    Created atomically: a second run started in the same second gets a `-2` (`-3`, ...) suffix."""
    name = config.tracking.run_name or f"{config.task.name}-{config.loop.strategy}-s{config.loop.seed}"
    base = Path(config.tracking.output_dir).resolve() / f"{name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    base.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        run_dir = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            run_dir.mkdir(exist_ok=False)
            return run_dir
        except FileExistsError:
            continue
    raise RuntimeError(f"{base}: 999 run directories with this name and second")


def run(config: RunConfig, verbose: bool = True) -> RunSummary:
    """Load data, start Ray and the actors, run the loop, log everything; see the module docstring.
    `verbose` False: Ray workers' output goes to the run's log file only.

    Raises:
        loopdistill.tasks.DataError: a data file is missing or malformed (before anything starts).
        loopdistill.models.ModelLoadError: a model path does not load (before anything starts).
        loopdistill.config.ConfigError: a setting does not fit the model (before anything starts).
        drivers.checkpoint.RunInterrupted: Ctrl-C, or SIGTERM inside drivers.checkpoint.stop_on_sigterm;
            the run directory can be resumed.
    """
    from drivers.preflight import check_fits_models

    splits = load_splits(config)
    check_fits_models(config)
    preflight_teacher(config)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(dump_config(config))
    return _drive(config, splits, run_dir, state=None, verbose=verbose)


def resume(run_dir: str | Path, overrides: list[str] | None = None, verbose: bool = True) -> RunSummary:
    """Continue the run in `run_dir` after its last completed stage, in the same MLflow run.
    `overrides`: `section.key=value` of the RESUMABLE_OVERRIDES settings (written to config.json).
    A run that already ended (completed, stopped by the gate or the forecast, or stopped by its
    budget and given no new budget) is returned as it is, without starting Ray or any actor.

    Raises:
        drivers.checkpoint.ResumeError: no such directory, or no readable state.json / config.json.
        loopdistill.config.ConfigError: an override of a setting that must not change (key named).
    """
    from drivers.preflight import check_fits_models

    run_dir = Path(run_dir).resolve()
    if not run_dir.is_dir():
        raise ResumeError(f"cannot resume {run_dir}: no such directory")
    state = RunState.load(run_dir)
    config_path = run_dir / "config.json"
    try:
        data = json.loads(config_path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"a JSON object is needed, got {type(data).__name__}")
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise ResumeError(f"cannot resume {run_dir}: {config_path} is unreadable ({str(err).splitlines()[0]})") from None
    overrides = list(overrides or [])
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not any(key == allowed or (allowed.endswith(".*") and key.startswith(allowed[:-1])) for allowed in RESUMABLE_OVERRIDES):
            raise ConfigError(f"override {key!r} cannot change on resume (it would change the experiment); allowed: {', '.join(RESUMABLE_OVERRIDES)}")
    config = build_config(apply_overrides(data, overrides), str(config_path))
    # A gate or forecast stop is final (Runner.run honours it): no override makes the run go on.
    if state.stop_reason and (state.halt_reason or state.iteration >= config.loop.iterations or not overrides):
        log.info("%s already ended (%s); nothing to do", run_dir, state.stop_reason)
        summary_file = run_dir / "summary.json"
        if summary_file.is_file():
            try:
                return RunSummary(**json.loads(summary_file.read_text()))
            except (ValueError, TypeError):
                pass
        return RunSummary(str(run_dir), state.mlflow_run_id, state.iteration, state.stop_reason, state.history)
    # config.json holds URLs redacted (user:pass@ and secret query parameters become ***): such a URL must
    # be given again. Checked only for a run that goes on: an ended run needs no teacher.
    if config.teacher.engine == "openai" and REDACTED in config.teacher.openai.base_url:
        raise ConfigError("teacher.openai.base_url: its credentials were not stored; give teacher.openai.base_url=URL on resume")
    check_fits_models(config)
    preflight_teacher(config)
    if overrides:
        (run_dir / "config.json").write_text(dump_config(config))
        log.info("resuming %s with %s", run_dir, overrides)
    state.stop_reason = ""
    return _drive(config, load_splits(config), run_dir, state, verbose=verbose, overrides=overrides)


def load_splits(config: RunConfig) -> Splits:
    """The task's splits, checked: a non-empty seed pool, ids unique across all splits, and no problem
    (the task's normalised question key, `Task.dedup_key`) in two of seeds/validation/test.

    Raises:
        loopdistill.tasks.DataError: naming the data path and the empty split, the duplicated ids or the shared problem.
    """
    tc = config.task
    options = {"levels": tc.levels} if tc.levels is not None else {}  # MATH difficulty levels only
    splits = configured_task(config).load_splits(tc.data_path, tc.num_seeds, tc.num_validation, tc.num_test, tc.seed, **options)
    if splits.seeds.num_rows == 0:
        raise DataError(f"{tc.data_path}: the seed pool is empty")
    ids = [i for table in (splits.seeds, splits.validation, splits.test) for i in table.column("id").to_pylist()]
    duplicates = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) < len(ids) else []
    if duplicates:
        raise DataError(f"{tc.data_path}: duplicate ids across seeds/validation/test: {duplicates[:10]}")
    shared = decontamination.overlapping_keys(
        get_task(tc.name), {name: getattr(splits, name).column("question").to_pylist() for name in ("seeds", "validation", "test")}
    )
    if shared:
        a, b, question = shared[0]
        raise DataError(f"{tc.data_path}: {len(shared)} question(s) in both {a} and {b}, e.g. {question!r:.80}")
    return splits


def configured_task(config: RunConfig) -> Task:
    """The task named by `config.task` with the run options it takes (`Task.OPTIONS`, e.g. Game of 24's
    `max_number`) set from the config fields of the same names."""
    task = get_task(config.task.name)
    return task.with_options(**{k: v for k in task.OPTIONS if (v := getattr(config.task, k)) is not None})


def _drive(config: RunConfig, splits: Splits, run_dir: Path, state: RunState | None, verbose: bool = True,
           overrides: list[str] | None = None) -> RunSummary:
    """Start Ray and the actors, run the loop in the MLflow run (the state's on resume), write and log
    summary.json. Ctrl-C (or SIGTERM, inside drivers.checkpoint.stop_on_sigterm) stops it: the MLflow run
    is marked KILLED and RunInterrupted names the directory to resume and the signal."""
    from drivers.ray_setup import collect_worker_logs, init_ray

    log_handler, started, drive_start = attach_run_log(run_dir), time.time(), time.perf_counter()
    try:
        # Started before Ray: on a cluster, tracking-server problems show before any actor is paid for.
        with Tracker(config, run_dir, config.tracking.run_name or run_dir.name, run_id=state.mlflow_run_id if state else None) as tracker:
            state = state or RunState(mlflow_run_id=tracker.run_id)
            state.save(run_dir)
            tracker.log_artifact(run_dir / "config.json")
            if overrides:
                tracker.set_tags({f"resume_override.{o.split('=', 1)[0]}": o.split("=", 1)[1] for o in overrides})
            ray_start = time.perf_counter()
            init_ray(config, run_dir=run_dir, verbose=verbose)
            ray_init_s = time.perf_counter() - ray_start
            rearm_sigterm()  # ray.init put its own SIGTERM handler in place of the command line's
            actors = start_actors(config, run_dir)
            tracker.log_artifact(run_dir / RESOURCES_FILE)  # what each role holds (written by start_actors)
            try:
                ctx = make_context(config, configured_task(config), splits, actors, run_dir, state)
                with RunProgress(lambda: _budget_left(ctx.ledger)) as progress:
                    runner = Runner(ctx, tracker, progress)
                    startup = startup_metrics(ray_init_s, actors.startup_s, time.perf_counter() - drive_start)
                    tracker.log_metrics(startup, step=0)
                    log.info("start-up: %s", ", ".join(f"{k.split('/', 1)[1]} {v:.1f}" for k, v in startup.items()))
                    done, reason = runner.run()
                state.stop_reason = reason
                runner.save_state()
                tracker.set_tags({"stop_reason": reason, "iterations_completed": str(done)})
            except KeyboardInterrupt:
                tracker.mark_interrupted()  # first: stopping the actors may hang (see mark_interrupted)
                raise
            finally:
                try:
                    actors.shutdown()
                except Exception:  # e.g. Ctrl-C also reached the actors: the run's own error matters
                    log.warning("stopping the actors failed", exc_info=True)
            summary = RunSummary(str(run_dir), tracker.run_id, done, reason, state.history)
            (run_dir / "summary.json").write_text(json.dumps(summary.__dict__, indent=2))
            tracker.log_artifact(run_dir / "summary.json")
            tracker.log_artifact(run_dir / "run.log")
    except KeyboardInterrupt:
        raise RunInterrupted(str(run_dir), signal.SIGTERM if sigterm_received() else signal.SIGINT) from None
    finally:
        collect_worker_logs(run_dir, started)
        detach_run_log(log_handler)
    from rich.console import Console

    Console(stderr=True).print(final_table(summary, state.history, state.baseline))
    return summary


def _budget_left(ledger: BudgetLedger) -> str:
    """What the tightest budget limit has left, e.g. '81% teacher_output_tokens' ('unlimited')."""
    lim, spent = ledger.limits, ledger.metrics()
    pairs = {name: spent[f"budget/{name}"] for name in LIMITS}
    left = [(1 - used / limit, name) for name, used in pairs.items() if (limit := getattr(lim, name)) is not None and limit > 0]
    if not left:
        return "unlimited"
    fraction, name = min(left)
    return f"{max(fraction, 0):.0%} {name}"
