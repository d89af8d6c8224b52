"""The runner: for each iteration, the stages of drivers/stages in order, each checkpointed; nothing else.

    baseline: evaluate the untrained student (step 0 of every curve)
    for t in state.iteration .. loop.iterations - 1:
        predict -> select -> generate -> fidelity -> train -> evaluate   (checkpointed, timed)
        gate -> [spend figures] -> forecast                                (the gate saves its own decisions)
        log the iteration's metrics at step t + 1, its figures and iter_NN/ to MLflow

After a stage the runner writes its tables as iter_NN/<name>.parquet and state.json (the stage is done,
with the iteration's metrics so far); a resumed run reads finished stages' tables back instead of
running them. A stage's stop_reason (a budget stop, the gate's halt, the forecast) ends the run.
"""
from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from types import MappingProxyType

import pyarrow as pa
import pyarrow.parquet as pq

from drivers import figures
from drivers.context import RunContext, StageInputs, StageResult
from drivers.stages import evaluate, fidelity, gate, generate, predict, select, train
from drivers.tracking import Tracker
from loopdistill.schemas import SYNTHETIC, make_table

log = logging.getLogger("loopdistill")

STAGES = (predict, select, generate, fidelity, train, evaluate)  # checkpointed, in this order


def stage_name(stage) -> str:
    return stage.__name__.rsplit(".", 1)[-1]


class Runner:
    """Runs one run's iterations over `ctx` (fresh, or the state a crashed run left), logging to
    `tracker`; `progress` (drivers.progress.RunProgress or None) shows a line per stage."""

    def __init__(self, ctx: RunContext, tracker: Tracker, progress=None):
        self.ctx, self.tracker, self.progress = ctx, tracker, progress
        ctx.checkpoint, ctx.save_state = self.checkpoint, self.save_state
        self.synthetic = load_synthetic(ctx)
        self.metrics: dict[str, float] = {}  # of the iteration in progress

    def run(self) -> tuple[int, str]:
        """(iterations completed, stop reason: "completed", a budget stop, the gate's halt, the forecast)."""
        ctx, state = self.ctx, self.ctx.state
        if state.halt_reason:  # the gate or the forecast stopped this run: a resume runs nothing
            return state.iteration, state.halt_reason
        if not state.baseline_done:
            state.baseline = self.call("baseline: evaluate", evaluate.progress_rows(ctx), evaluate.run, None).metrics
            self.tracker.log_metrics(state.baseline, step=0)
            state.baseline_done = True
            self.save_state()
        for t in range(state.iteration, ctx.config.loop.iterations):
            reason = ctx.ledger.exhausted() if not state.stages_done else None
            reason = reason or self.iteration(t)
            if reason:  # a budget stop inside t, or a gate/forecast stop after t finished
                return state.iteration, reason
        return ctx.config.loop.iterations, "completed"

    def iteration(self, t: int) -> str:
        """Run the stages of iteration t not yet done. Returns a stop reason, or "" when completed."""
        ctx = self.ctx
        ctx.iter_dir(t).mkdir(parents=True, exist_ok=True)
        self.metrics = dict(ctx.state.partial_metrics) or {"iteration": t}
        tables: dict[str, pa.Table] = {}
        for stage in STAGES:
            result = self.stage(t, stage, tables)
            if result.stop_reason:
                return result.stop_reason
            tables.update(result.tables)
        gated = self.timed(t, "gate", gate.run, tables)
        self.metrics.update(ctx.spend_metrics())  # the forecast reads this iteration's budget/* figures
        forecast = self.timed(t, "forecast", gate.forecast, tables)
        self.finish(t)
        return gated.stop_reason or forecast.stop_reason

    def stage(self, t: int, stage, tables: dict[str, pa.Table]) -> StageResult:
        """Run one checkpointed stage, or read its tables back when this run directory finished it (or
        a later stage: a stage added since an older run directory was written is not run late)."""
        name, done = stage_name(stage), self.ctx.state.stages_done
        if any(stage_name(s) in done for s in STAGES[STAGES.index(stage):]):
            log.info("iteration %d: stage %s already done, reading its output", t, name)
            return StageResult(tables={key: pq.read_table(self.ctx.iter_dir(t) / f"{key}.parquet") for key in stage.TABLES})
        log.info("iteration %d: stage %s", t, name)
        start = time.perf_counter()
        rows = getattr(stage, "progress_rows", None)
        result = self.call(f"iteration {t}: {name}", rows(self.ctx) if rows else None, stage.run, self.inputs(t, tables))
        if result.stop_reason:  # a budget stop: nothing to keep, the stage is not done
            return result
        if set(result.tables) != set(stage.TABLES):
            raise RuntimeError(f"stage {name} returned tables {sorted(result.tables)}, declared {sorted(stage.TABLES)}")
        if "synthetic" in result.tables:  # S grows by each finished generate stage's rows
            self.synthetic = pa.concat_tables([self.synthetic, result.tables["synthetic"]])
        self.metrics[f"time/{name}_s"] = time.perf_counter() - start
        self.checkpoint(t, name, result)
        return result

    def timed(self, t: int, name: str, run, tables: dict[str, pa.Table]) -> StageResult:
        """Run a stage that is not checkpointed (it is idempotent on resume) and merge its metrics."""
        start = time.perf_counter()
        result = run(self.ctx, self.inputs(t, tables))
        self.metrics.update(result.metrics)
        self.metrics[f"time/{name}_s"] = time.perf_counter() - start
        return result

    def call(self, label: str, rows: int | None, run, inputs) -> StageResult:
        """run(ctx, inputs) under a progress line (ctx.bar while it runs)."""
        with self.progress.stage(label, rows) if self.progress is not None else nullcontext(None) as bar:
            self.ctx.bar = bar
            try:
                return run(self.ctx, inputs)
            finally:
                self.ctx.bar = None

    def inputs(self, t: int, tables: dict[str, pa.Table]) -> StageInputs:
        return StageInputs(t, MappingProxyType(dict(tables)), self.synthetic, MappingProxyType(dict(self.metrics)))

    def checkpoint(self, t: int, name: str, result: StageResult) -> None:
        """Record stage `name` of iteration t as done: its series to MLflow, its tables under
        iter_NN/, its metrics into the iteration's, then state.json."""
        for key, values in result.series.items():
            self.tracker.log_series(key, values, first_step=1)
        for key, table in result.tables.items():
            pq.write_table(table, self.ctx.iter_dir(t) / f"{key}.parquet")
        self.metrics.update(result.metrics)
        self.ctx.state.complete_stage(name, self.metrics)
        self.save_state()

    def finish(self, t: int) -> None:
        """Close iteration t: its metrics at step t + 1 (step 0 is the baseline), the gate's decisions
        (a tag), figures and iter_NN/ to MLflow, then state.json."""
        ctx, metrics, out_dir = self.ctx, self.metrics, self.ctx.iter_dir(t)
        self.tracker.log_metrics(metrics, step=t + 1)
        decisions = [d for d in ctx.state.gate_decisions if d["iteration"] == t]
        if decisions:  # the final decision first, then the reductions that led to it (every decision is logged)
            final, earlier = decisions[-1], decisions[:-1]
            text = f"{final['action']}: {final['reason']}"
            if earlier:
                text += " | after: " + " | ".join(f"attempt {d['attempt']}: {d['reason']}" for d in earlier)
            self.tracker.set_tags({f"gate/iter_{t:02d}": text[:5000]})  # MLflow's tag-value limit
        for path, figure in figures.iteration_figures(ctx.config, ctx.state, t, out_dir, metrics).items():
            self.tracker.log_figure(figure, path)
        self.tracker.log_artifacts(out_dir, f"iter_{t:02d}")
        ctx.state.complete_iteration(metrics)
        self.save_state()
        log.info("iteration %d: %s", t, {k: round(v, 4) for k, v in metrics.items() if k.startswith(("eval/", "budget/teacher_tokens"))})

    def save_state(self) -> None:
        self.ctx.state.ledger = self.ctx.ledger.state()
        self.ctx.state.save(self.ctx.run_dir)


def load_synthetic(ctx: RunContext) -> pa.Table:
    """The cumulative synthetic set S from the iterations whose generate stage finished (by the
    state, not by the files: a crash between writing iter_NN/synthetic.parquet and state.json
    leaves a file whose rows the resumed generate stage writes again)."""
    done = ctx.state.iteration + (1 if "generate" in ctx.state.stages_done else 0)
    tables = [pq.read_table(p) for p in (ctx.iter_dir(t) / "synthetic.parquet" for t in range(done)) if p.is_file()]
    return pa.concat_tables([make_table(SYNTHETIC, []), *tables])
