"""Command line (also `python -m drivers.cli`):
    loopdistill run CONFIG [section.key=value ...] | run --resume RUN_DIR
    loopdistill compare --strategies a,b|all CONFIG [section.key=value ...]
    loopdistill check-config CONFIG [section.key=value ...]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from loopdistill.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopdistill", description="Closed-loop distillation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the loop of a YAML config, or resume a run directory")
    run.add_argument("config", nargs="?", help="path to a YAML run config (see configs/)")
    run.add_argument("overrides", nargs="*", help="section.key=value, e.g. loop.iterations=2")
    run.add_argument("--resume", metavar="RUN_DIR", help="continue this run after its last completed stage")
    compare = sub.add_parser("compare", help="one run per selection strategy, one MLflow experiment, a table")
    compare.add_argument("config")
    compare.add_argument("overrides", nargs="*")
    compare.add_argument("--strategies", required=True, help="comma-separated names, or 'all'")
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit codes: 0 done (including a clean budget stop), 2 bad config, data or model,
    1 any other failure (the MLflow run is then marked FAILED with the error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from drivers.checkpoint import ResumeError
    from loopdistill.models import ModelLoadError
    from tasks import DataError

    try:
        if args.command == "run" and args.resume:
            from drivers.loop import resume

            summary = resume(args.resume)
        elif args.command == "compare":
            return _compare(args)
        else:
            if not args.config:
                raise ConfigError("give a config file, or --resume RUN_DIR")
            config = load_config(args.config, args.overrides)
            if args.command == "check-config":
                print(config.model_dump_json(indent=2))
                return 0
            from drivers.loop import run

            summary = run(config)
    except (ConfigError, DataError, ResumeError, ModelLoadError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.__dict__.items() if k != "history"}, indent=2))
    print(f"MLflow run {summary.mlflow_run_id}; open the UI with: mlflow ui --backend-store-uri {tracking_uri_of(summary)}")
    return 0


def _compare(args) -> int:
    from drivers.compare import compare, markdown_table
    from drivers.strategies import STRATEGIES

    names = sorted(STRATEGIES) if args.strategies == "all" else [s.strip() for s in args.strategies.split(",") if s.strip()]
    print(markdown_table(compare(args.config, names, args.overrides)))
    return 0


def tracking_uri_of(summary) -> str:
    """The store the run logged to (read back from the run directory's resolved config)."""
    from pathlib import Path

    from drivers.tracking import tracking_uri
    from loopdistill.config import build_config

    config = build_config(json.loads((Path(summary.run_dir) / "config.json").read_text()))
    return tracking_uri(config.tracking)


if __name__ == "__main__":
    sys.exit(main())
