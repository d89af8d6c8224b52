"""Step 5: a fresh LoRA (re-initialised, not warm-started) on everything generated so far, minus the
rows of rolled-back iterations, mixed with real seed rows at the training set's synthetic fraction;
the trainer keeps the checkpoint best on validation and the student then serves the new adapter.
"""
from __future__ import annotations

import logging

import pyarrow as pa
import ray

from loopdistill.training_data import to_train_examples
from drivers import mixing
from drivers.context import RunContext, StageInputs, StageResult

log = logging.getLogger("loopdistill")

TABLES = ()


def run(ctx: RunContext, inputs: StageInputs, attempt: int = 0) -> StageResult:
    """Train on inputs.synthetic (S, SYNTHETIC rows); sets ctx.state.adapter_dir to the new adapter
    (written under iter_NN/adapter, or adapter_retrain<k> for the gate's k-th retrain, attempt k > 0)
    and charges the trainer's accelerator-seconds. Nothing happens without synthetic rows.

    Raises:
        loopdistill.config.ConfigError: the seed pool is too small for the synthetic fraction.
    """
    t, seeds = inputs.iteration, ctx.splits.seeds
    synthetic = mixing.excluded_rows_removed(inputs.synthetic, ctx.state.excluded_iterations)
    if synthetic.num_rows == 0:
        log.warning("iteration %d: no synthetic data to train on, keeping the current adapter", t)
        return StageResult()
    train_set = to_train_examples(ctx.task, synthetic)
    fraction = synthetic_fraction(ctx)
    if ctx.config.trainer.include_seeds:
        train_set = pa.concat_tables([to_train_examples(ctx.task, seeds), train_set])
    elif fraction < 1:
        if ctx.state.synthetic_fraction is not None:
            # The gate's cut was feasible for the rows of the iteration it judged; later iterations
            # add rows, and the same fraction may then need more seeds than the pool has. Use the
            # whole pool instead of failing mid-run (trainer.* cannot change on resume). The
            # configured fraction is checked at load and still fails naming its field.
            lowest = mixing.lowest_fraction(synthetic.num_rows, seeds.num_rows)
            if lowest > fraction:
                log.warning("iteration %d: the seed pool supplies a synthetic fraction of %.3g at least, not the "
                            "gate's %.3g: training on all %d seeds", t, lowest, fraction, seeds.num_rows)
                fraction = lowest
        real = mixing.sample_seeds(seeds, synthetic.num_rows, fraction, ctx.config.loop.seed)
        train_set = pa.concat_tables([to_train_examples(ctx.task, real), train_set])
    metrics = {"trainer/synthetic_rows": synthetic.num_rows, "trainer/real_rows": train_set.num_rows - synthetic.num_rows,
               "trainer/synthetic_fraction": synthetic.num_rows / train_set.num_rows}
    suffix = f"_retrain{attempt}" if attempt else ""
    result = ctx.actors.trainer.train(ray.put(train_set), ctx.refs.val_train, str(ctx.iter_dir(t) / f"adapter{suffix}"))
    ctx.state.adapter_dir = result.pop("adapter_dir")
    # One point per optimizer step; each iteration trains a fresh LoRA, so each gets its own curve.
    series = {f"trainer/step_loss_iter_{t:02d}{suffix}": result.pop("trainer/step_losses", []) or []}
    ctx.ledger.charge_seconds("trainer", float(result.get("trainer/accelerator_seconds", 0.0)))
    metrics.update({k: float(v) for k, v in result.items() if isinstance(v, (int, float))})
    return StageResult(metrics=metrics, series=series)


def synthetic_fraction(ctx: RunContext) -> float:
    """The training set's synthetic fraction now: the gate's last reduction, else the config's."""
    return ctx.state.synthetic_fraction if ctx.state.synthetic_fraction is not None else ctx.config.trainer.synthetic_fraction
