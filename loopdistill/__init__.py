"""loopdistill: closed-loop (student-in-the-loop) distillation on Ray.

Notebook use:

    from loopdistill import load_config, run
    summary = run(load_config("configs/quickstart.yaml", ["loop.iterations=1"]))

`run` lives in the driver layer (drivers.loop), which imports this package; it is imported lazily,
inside the function, so importing loopdistill never imports the drivers (imports stay one way).
"""
from __future__ import annotations

from loopdistill.config import ConfigError, RunConfig, load_config

__all__ = ["ConfigError", "RunConfig", "load_config", "run"]


def run(config: "RunConfig | str", overrides: list[str] | None = None, verbose: bool = True):
    """Run the loop of `config` (a RunConfig, or a YAML path plus `section.key=value` overrides) and
    return its drivers.loop.RunSummary (run_dir, mlflow_run_id, iterations_completed, stop_reason,
    history). Raises what drivers.loop.run raises (ConfigError, loopdistill.tasks.DataError, ModelLoadError)."""
    from drivers.loop import run as run_loop  # lazy: the driver layer imports this package

    if not isinstance(config, RunConfig):
        config = load_config(config, overrides)
    elif overrides:
        raise ConfigError("overrides apply to a YAML path; set fields of a RunConfig directly")
    return run_loop(config, verbose=verbose)
