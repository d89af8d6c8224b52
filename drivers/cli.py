"""Command line: `loopdistill run CONFIG [section.key=value ...]` (also `python -m drivers.cli`)."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from loopdistill.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopdistill", description="Closed-loop distillation on Ray")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the loop of a YAML config")
    run.add_argument("config", help="path to a YAML run config (see configs/)")
    run.add_argument("overrides", nargs="*", help="section.key=value, e.g. loop.iterations=2")
    check = sub.add_parser("check-config", help="validate a config and print it resolved")
    check.add_argument("config")
    check.add_argument("overrides", nargs="*")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point. Exit codes: 0 done (including a clean budget stop), 2 bad config or data,
    1 any other failure (the MLflow run is then marked FAILED with the error)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from tasks import DataError

    try:
        config = load_config(args.config, args.overrides)
        if args.command == "check-config":
            print(config.model_dump_json(indent=2))
            return 0
        from drivers.loop import run

        summary = run(config)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.__dict__.items() if k != "history"}, indent=2))
    print(f"MLflow UI: mlflow ui --backend-store-uri {_store_hint(config)}")
    return 0


def _store_hint(config) -> str:
    from drivers.tracking import tracking_uri

    return tracking_uri(config.tracking)


if __name__ == "__main__":
    sys.exit(main())
