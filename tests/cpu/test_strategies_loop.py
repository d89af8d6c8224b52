"""Every strategy runs one real iteration of the loop (tiny random Llama, Game of 24, programmatic
teacher and judge), all into one MLflow experiment, as a user compares them in the UI."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient

from drivers.loop import run
from drivers.strategies import STRATEGIES
from loop_helpers import tiny_config
from loopdistill.config import build_config


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_strategy_runs_one_iteration(strategy, tmp_path_factory, shared_data, ray_local, tiny_reward_model):
    tmp_path = tmp_path_factory.getbasetemp() / "strategies"  # one store for all strategies
    tmp_path.mkdir(exist_ok=True)
    cfg = tiny_config(
        tmp_path, shared_data, name=strategy,
        loop={"iterations": 1, "strategy": strategy, "seeds_per_iteration": 4, "responses_per_question": 2},
        reward={"source": "model", "model": {"path": tiny_reward_model}},
        tracking={"experiment": "strategies", "run_name": strategy, "output_dir": str(tmp_path / strategy),
                  "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
    )
    config = build_config(cfg)
    summary = run(config)
    assert summary.iterations_completed == 1 and summary.stop_reason == "completed"

    selected = pq.read_table(f"{summary.run_dir}/iter_00/selected.parquet")
    assert selected.num_rows == 4 and len(set(selected.column("id").to_pylist())) == 4
    client = MlflowClient(config.tracking.tracking_uri)
    metrics = client.get_run(summary.mlflow_run_id).data.metrics
    for key in ("select/selected_mean_score", "select/pool_median_score", "fidelity/token_tv_distance", "synth/answers_generated"):
        assert key in metrics, key
    if STRATEGIES[strategy].needs == ("judge",):
        assert metrics["judge/unparseable"] == 0  # the programmatic judge always answers in format
    experiment = client.get_experiment_by_name("strategies")
    assert client.get_run(summary.mlflow_run_id).info.experiment_id == experiment.experiment_id


def test_compare_runs_each_strategy_into_one_experiment_and_tabulates(tmp_path, shared_data, ray_local):
    import yaml

    from drivers.compare import compare, markdown_table

    cfg = tiny_config(tmp_path, shared_data, name="cmp", loop={"iterations": 1, "seeds_per_iteration": 2},
                      tracking={"experiment": "cmp", "run_name": None})
    path = tmp_path / "cmp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = compare(str(path), ["random", "loss_low"], ["task.num_seeds=6"])
    assert [r["strategy"] for r in rows] == ["random", "loss_low"]
    client = MlflowClient(cfg["tracking"]["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("cmp").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["loss_low", "random"]
    table = markdown_table(rows)
    assert table.count("\n") == 3 and "| random |" in table and rows[0]["budget/teacher_tokens"] > 0


def test_an_llm_teacher_whose_rewrites_never_parse_leaves_the_iteration_complete(tmp_path, shared_data, ray_local):
    """A random tiny Llama teacher writes gibberish: every rewrite is unparseable, counted, and the
    iteration still finishes (nothing to train on yet, the current adapter is kept)."""
    cfg = tiny_config(
        tmp_path, shared_data, name="gibberish",
        task={"name": "gsm8k", "data_path": str(shared_data / "gsm8k"), "num_seeds": 6, "num_validation": 2, "num_test": 2},
        teacher={"engine": "transformers", "max_new_tokens": 12, "temperature": 0.0},
        loop={"iterations": 1, "strategy": "judge_hard", "seeds_per_iteration": 3, "responses_per_question": 2},
    )
    config = build_config(cfg)
    summary = run(config)
    assert summary.iterations_completed == 1 and summary.stop_reason == "completed"
    metrics = MlflowClient(config.tracking.tracking_uri).get_run(summary.mlflow_run_id).data.metrics
    assert metrics["synth/unparseable_rewrites"] == 3 and metrics["synth/kept"] == 0
    assert metrics["judge/unparseable"] == 12  # 6 seeds x 2 orders, none in "Score A: x; Score B: y" form
    # Judge tokens are charged: 6 teacher answers + 3 rewrites + the distinct judge prompts. Teacher and
    # student are the same greedy tiny model here, so a seed's two orders may coincide (paid once).
    assert 6 + 6 + 3 <= metrics["budget/teacher_requests"] <= 6 + 12 + 3
