"""trainer.synthetic_fraction: the training set's synthetic / total is the configured fraction."""
from fractions import Fraction

import pytest

from drivers import mixing
from loopdistill.config import ConfigError, build_config
from loopdistill.schemas import SEEDS, SYNTHETIC, make_table


def seeds(n):
    return make_table(SEEDS, [{"id": f"s{i}", "question": f"q{i}", "answer": f"a{i}", "reference": str(i)} for i in range(n)])


def synthetic(per_iteration):
    rows = [{"id": f"x{t}-{i}", "parent_id": "s0", "iteration": t, "strategy": "random", "question": f"sq{t}-{i}",
             "answer": "a", "reference": "r", "teacher_input_tokens": 1, "teacher_output_tokens": 1}
            for t, n in enumerate(per_iteration) for i in range(n)]
    return make_table(SYNTHETIC, rows)


@pytest.mark.parametrize("n_synthetic,fraction", [(30, 0.6), (40, 0.25), (10, 0.5), (7, 1.0), (45, 0.75)])
def test_exact_fraction(n_synthetic, fraction):
    real = mixing.sample_seeds(seeds(200), n_synthetic, fraction, seed=0)
    assert Fraction(n_synthetic, n_synthetic + real.num_rows) == Fraction(fraction).limit_denominator(100)


@pytest.mark.parametrize("n_synthetic,fraction", [(7, 0.3), (13, 0.45), (101, 0.2), (1, 0.9)])
def test_inexact_fraction_rounds_to_at_most_the_target(n_synthetic, fraction):
    k = mixing.sample_seeds(seeds(1000), n_synthetic, fraction, seed=0).num_rows
    achieved = n_synthetic / (n_synthetic + k)
    assert achieved <= fraction and fraction - achieved < 1 / (n_synthetic + k)
    assert n_synthetic / (n_synthetic + k - 1) > fraction  # one seed fewer would overshoot


def test_sampling_is_seeded_and_nested():
    pool = seeds(100)
    a = mixing.sample_seeds(pool, 30, 0.6, seed=3).column("id").to_pylist()
    assert a == mixing.sample_seeds(pool, 30, 0.6, seed=3).column("id").to_pylist()
    assert a != mixing.sample_seeds(pool, 30, 0.6, seed=4).column("id").to_pylist()
    more = mixing.sample_seeds(pool, 30, 0.4, seed=3).column("id").to_pylist()
    assert set(a) < set(more) and len(set(more)) == len(more) == 45


def test_too_small_a_seed_pool_names_the_field():
    with pytest.raises(ConfigError, match=r"trainer\.synthetic_fraction.*needs 30 real seed rows.*has 8.*0\.5"):
        mixing.sample_seeds(seeds(8), 10, 0.25, seed=0)
    assert mixing.lowest_fraction(10, 8) == pytest.approx(10 / 18)


def test_excluded_iterations_leave_the_training_rows():
    table = synthetic([3, 4, 5])
    kept = mixing.excluded_rows_removed(table, [1])
    assert kept.num_rows == 8 and set(kept.column("iteration").to_pylist()) == {0, 2}
    assert mixing.excluded_rows_removed(table, []).num_rows == 12


def test_config_field_is_validated(tmp_path):
    base = {"task": {"name": "game24", "data_path": "generate"}}
    assert build_config(base).trainer.synthetic_fraction == 1.0
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="trainer.synthetic_fraction"):
            build_config({**base, "trainer": {"synthetic_fraction": bad}})
    with pytest.raises(ConfigError, match="include_seeds"):
        build_config({**base, "trainer": {"synthetic_fraction": 0.5, "include_seeds": True}})


def test_config_refuses_a_fraction_the_seed_pool_cannot_reach():
    base = {"task": {"name": "game24", "data_path": "generate", "num_seeds": 64}, "loop": {"iterations": 3, "seeds_per_iteration": 8}}
    assert build_config({**base, "trainer": {"synthetic_fraction": 0.3}}).trainer.synthetic_fraction == 0.3  # 24 + 56 seeds
    with pytest.raises(ConfigError, match=r"trainer\.synthetic_fraction: 0\.25 needs up to 72 real seed rows"):
        build_config({**base, "trainer": {"synthetic_fraction": 0.25}})
    # a sample budget caps the synthetic rows, and so the seeds needed
    assert build_config({**base, "trainer": {"synthetic_fraction": 0.25}, "budget": {"teacher_samples": 20}})
