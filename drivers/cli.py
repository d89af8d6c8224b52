"""Command line (also `python -m drivers.cli`):
    loopdistill run CONFIG [section.key=value ...] | run --resume RUN_DIR [section.key=value ...]
    loopdistill compare --strategies a,b|all CONFIG [section.key=value ...]
    loopdistill check-config CONFIG [section.key=value ...]
    loopdistill study CONFIG --strategies a b ... --replicates N [section.key=value ...] | study --resume STUDY_DIR
    loopdistill study-report STUDY_DIR
"""
from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys

from loopdistill.config import ConfigError, load_config
from loopdistill.secrets import redact


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopdistill", description="Closed-loop distillation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the loop of a YAML config, or resume a run directory")
    run.add_argument("config", nargs="?", help="path to a YAML run config (see configs/)")
    run.add_argument("overrides", nargs="*", help="section.key=value, e.g. loop.iterations=2")
    run.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue this run after its last completed stage; overrides may change only: "
        "loop.iterations, loop.fidelity_metrics, budget.*, ray.*, teacher.openai connection settings, resources, "
        "batch sizes, restarts (drivers.loop.RESUMABLE_OVERRIDES)",
    )
    run.add_argument("--verbose", action="store_true", help="show library logs and Ray workers' output on the terminal")
    compare = sub.add_parser("compare", help="one run per selection strategy, one MLflow experiment, a table")
    compare.add_argument("config")
    compare.add_argument("overrides", nargs="*")
    compare.add_argument("--strategies", required=True, help="comma-separated names, or 'all'")
    study = sub.add_parser("study", help="strategies x replicate seeds as concurrent child runs on Ray, one MLflow parent run, a report")
    study.add_argument("config", nargs="?", help="path to a YAML run config")
    study.add_argument("overrides", nargs="*", help="section.key=value for every child run")
    study.add_argument("--strategies", nargs="+", default=[], help="selection strategies, e.g. random loss_high")
    study.add_argument("--replicates", type=int, default=3, help="seeds per strategy: loop.seed + 0 .. N-1 (task.seed stays fixed)")
    study.add_argument("--name", help="study name (default: the config file's stem); state in <output_dir>/study-<name>/")
    study.add_argument("--resume", metavar="STUDY_DIR", help="continue this study (finished children are not rerun)")
    study.add_argument("--max-concurrent", type=int, help="at most this many child runs at once (default: as many as the cluster holds)")
    study.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable of the child runs' processes; not for API keys (Ray keeps runtime_env values "
                       "in its dashboard): give those to the nodes' environment, e.g. a Kubernetes Secret")
    study_report = sub.add_parser("study-report", help="rewrite a study's report.md and figures from its child runs")
    study_report.add_argument("study_dir")
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit codes: 0 done (including a clean budget stop), 2 bad config, data or model,
    130 interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM: `kill`, `ray job stop`, a Kubernetes pod
    deletion; `run` only), 1 any other failure (the MLflow run is then marked FAILED with the error).
    On 130 and 143 the MLflow run is marked KILLED, state.json keeps every finished stage and one line
    on stderr gives the command that continues the run."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command == "study" and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # key=value given after the study's options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from drivers.progress import setup_logging

    setup_logging(getattr(args, "verbose", False))
    from actors.group import ActorStartError  # an actor's constructor raised: its role and reason, one line
    from drivers.checkpoint import ResumeError, RunInterrupted, sigterm_received, stop_on_sigterm
    from loopdistill.models import ModelLoadError
    from loopdistill.tasks import DataError

    # SIGTERM (`kill`, `ray job stop`, a Kubernetes pod deletion) stops a run as Ctrl-C does.
    try:
        with stop_on_sigterm() if args.command == "run" else contextlib.nullcontext():
            if args.command == "run" and args.resume:
                from drivers.loop import resume

                # argparse puts the first override in the `config` slot when --resume is given.
                overrides = ([args.config] if args.config else []) + list(args.overrides)
                summary = resume(args.resume, overrides, verbose=args.verbose)
            elif args.command == "compare":
                return _compare(args)
            elif args.command in ("study", "study-report"):
                return _study(args)
            else:
                if not args.config:
                    raise ConfigError("give a config file, or --resume RUN_DIR")
                config = load_config(args.config, args.overrides)
                if args.command == "check-config":
                    from loopdistill.config import dump_config

                    print(dump_config(config))
                    return 0
                from drivers.loop import run

                summary = run(config, verbose=args.verbose)
    except (ConfigError, DataError, ResumeError, ModelLoadError, ActorStartError) as err:
        print(redact(f"error: {err}"), file=sys.stderr)
        return 2
    except RunInterrupted as err:
        how = "terminated (SIGTERM)" if err.signum == signal.SIGTERM else "interrupted"
        print(f"{how}; continue with: loopdistill run --resume {err.run_dir}", file=sys.stderr)
        return 128 + err.signum
    except KeyboardInterrupt:  # before a run directory existed: nothing to resume
        if args.command == "run" and sigterm_received():
            print("terminated (SIGTERM) before the run started", file=sys.stderr)
            return 128 + signal.SIGTERM
        print("interrupted before the run started", file=sys.stderr)
        return 130
    except Exception:  # noqa: BLE001 - any other failure: exit 1 with the traceback, URL credentials redacted
        import traceback

        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.__dict__.items() if k != "history"}, indent=2))
    print(ui_hint(summary))
    return 0


def _compare(args) -> int:
    from drivers.compare import compare, markdown_table
    from drivers.strategies import STRATEGIES

    names = sorted(STRATEGIES) if args.strategies == "all" else [s.strip() for s in args.strategies.split(",") if s.strip()]
    print(markdown_table(compare(args.config, names, args.overrides)))
    return 0


def _study(args) -> int:
    """`study` / `study-report`: 0 all children done, 1 some child failed (the report covers the rest)."""
    from drivers.study import StudyIncomplete, StudyInterrupted, regenerate_report, run_study

    if args.command == "study-report":
        print(f"report: {regenerate_report(args.study_dir)}")
        return 0
    # `--strategies a b key=value`: nargs="+" also swallows the overrides that follow it.
    strategies = [s for s in args.strategies if "=" not in s]
    overrides = [*args.overrides, *(s for s in args.strategies if "=" in s)]
    bad = [e for e in args.env if "=" not in e]
    if bad:
        raise ConfigError(f"--env {bad[0]!r} is not of the form KEY=VALUE")
    try:
        result = run_study(args.config, strategies, args.replicates, overrides, name=args.name,
                           resume_dir=args.resume, max_concurrent=args.max_concurrent, env_vars=dict(e.split("=", 1) for e in args.env) or None)
    except StudyIncomplete as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StudyInterrupted as err:
        print(f"interrupted; continue with: loopdistill study --resume {err.study_dir}", file=sys.stderr)
        return 130
    print(json.dumps(result.__dict__, indent=2))
    return 0


def ui_hint(summary) -> str:
    """How to open the run's experiment on its runs table. MLflow 3's UI opens experiments in its GenAI
    view unless the URL asks for workflowType=machine_learning."""
    from mlflow.tracking import MlflowClient

    uri = tracking_uri_of(summary)
    try:
        experiment = MlflowClient(uri).get_run(summary.mlflow_run_id).info.experiment_id
    except Exception:  # the store is unreachable now: the command alone still helps
        return f"MLflow run {summary.mlflow_run_id}; open the UI with: mlflow ui --backend-store-uri {uri}"
    page = f"#/experiments/{experiment}/runs?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"MLflow run {summary.mlflow_run_id}: {redact(uri.rstrip('/'))}/{page}"
    return f"MLflow run {summary.mlflow_run_id}; open the UI with: mlflow ui --backend-store-uri {uri}  then http://127.0.0.1:5000/{page}"


def tracking_uri_of(summary) -> str:
    """The store the run logged to (read back from the run directory's resolved config)."""
    from pathlib import Path

    from drivers.tracking import tracking_uri
    from loopdistill.config import build_config

    config = build_config(json.loads((Path(summary.run_dir) / "config.json").read_text()))
    return tracking_uri(config.tracking)


if __name__ == "__main__":
    sys.exit(main())
