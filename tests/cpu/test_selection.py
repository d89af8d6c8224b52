"""Every strategy on signals where the right choice is known by construction."""
import numpy as np
import pytest

from drivers import selection
from drivers.badge import kmeans_pp_seeding
from drivers.signals import Signals
from drivers.strategies import STRATEGIES, balanced_pick
from loopdistill.config import ConfigError, build_config
from loopdistill.schemas import PREDICTIONS, make_table


def _signals(n=8, **fields):
    base = {"loss": np.zeros(n), "correct": np.zeros(n, bool)}
    base.update({k: np.asarray(v) for k, v in fields.items()})
    return Signals(ids=[f"s{i}" for i in range(n)], **base)


def _chosen(strategy, signals, m, **kw):
    return list(selection.choose(strategy, signals, m, **kw)[1])


def test_every_paper_strategy_is_registered_with_a_source():
    expected = {"random", "loss_high", "loss_low", "gt_loss_high", "reward_low", "reward_high",
                "judge_hard", "lion", "incorrect", "evokd", "badge"}
    assert set(STRATEGIES) == expected
    assert all(s.source for s in STRATEGIES.values())


def test_loss_strategies_rank_by_the_students_own_answer_loss():
    s = _signals(5, loss=[0.1, 2.0, 0.5, 3.0, 1.0])
    assert _chosen("loss_high", s, 2) == [3, 1]
    assert _chosen("loss_low", s, 2) == [0, 2]


def test_gt_loss_high_ranks_by_the_reference_answer_loss_not_the_own_answer_loss():
    s = _signals(4, loss=[9.0, 0.0, 0.0, 0.0], gt_loss=[0.1, 0.2, 5.0, 0.3])
    assert _chosen("gt_loss_high", s, 1) == [2]


def test_reward_strategies_take_the_lowest_or_highest_reward():
    s = _signals(4, reward=[0.5, -2.0, 3.0, 0.0])
    assert _chosen("reward_low", s, 2) == [1, 3]
    assert _chosen("reward_high", s, 2) == [2, 0]


def test_judge_hard_takes_the_largest_teacher_minus_student_gap():
    s = _signals(4, judge_gap=[0.0, 4.5, -1.0, 2.0])
    assert _chosen("judge_hard", s, 2) == [1, 3]


def test_lion_draws_equally_from_hard_and_easy_pools():
    gap = np.array([3, 0, 2, 0.5, 1.0, 0, 0, 0, 0.99, 5])  # hard (>= 1): 0, 2, 4, 9
    for seed in range(20):
        idx = _chosen("lion", _signals(10, judge_gap=gap), 4, seed=seed)
        assert len(set(idx)) == 4
        assert sum(gap[i] >= 1 for i in idx) == 2


def test_lion_fills_from_the_other_pool_when_one_is_short():
    gap = np.array([3, 0, 0, 0, 0, 0])
    idx = _chosen("lion", _signals(6, judge_gap=gap), 4)
    assert 0 in idx and len(set(idx)) == 4


def test_incorrect_takes_wrong_answers_first_then_fills():
    correct = np.array([1, 0, 1, 1, 0, 1], bool)
    idx = _chosen("incorrect", _signals(6, correct=correct), 3)
    assert set(idx[:2]) == {1, 4} and correct[idx[2]]


def test_evokd_mixes_correct_and_incorrect_equally():
    correct = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    for seed in range(10):
        idx = _chosen("evokd", _signals(8, correct=correct), 4, seed=seed)
        assert sum(correct[idx]) == 2 and len(set(idx)) == 4


def test_balanced_pick_never_repeats_and_respects_m():
    groups = [np.array([0, 1]), np.array([2, 3, 4, 5, 6])]
    idx = balanced_pick(groups, 5, np.random.default_rng(0))
    assert len(idx) == 5 and len(set(idx.tolist())) == 5 and {0, 1} <= set(idx.tolist())


def test_badge_prefers_large_gradients_and_diverse_points():
    rng = np.random.default_rng(0)
    # Three tight clusters; cluster A has large norms (high loss), B and C small; within A one point
    # has the largest norm of all. BADGE starts there, then should cover the other clusters rather than
    # pick more points of A.
    a = np.array([10.0, 0.0]) + 0.01 * rng.standard_normal((5, 2))
    a[2] = [11.0, 0.0]
    b = np.array([0.0, 3.0]) + 0.01 * rng.standard_normal((5, 2))
    c = np.array([-3.0, -1.0]) + 0.01 * rng.standard_normal((5, 2))
    emb = np.vstack([a, b, c])
    for seed in range(10):
        idx = kmeans_pp_seeding(emb, 3, np.random.default_rng(seed))
        assert idx[0] == 2
        assert {i // 5 for i in idx} == {0, 1, 2}
    assert _chosen("badge", _signals(15, embedding=emb), 3)[0] == 2


def test_badge_with_identical_points_still_returns_m_distinct_rows():
    idx = kmeans_pp_seeding(np.ones((6, 3)), 4, np.random.default_rng(0))
    assert len(set(idx.tolist())) == 4


def test_random_is_reproducible_and_seed_dependent():
    s = _signals(50)
    assert _chosen("random", s, 10, seed=1) == _chosen("random", s, 10, seed=1)
    assert _chosen("random", s, 10, seed=1) != _chosen("random", s, 10, seed=2)


def test_argmax_ties_break_by_index():
    assert list(selection.select(np.array([1.0, 1.0, 1.0]), 2)) == [0, 1]


def test_m_larger_than_pool_selects_all():
    assert sorted(selection.select(np.array([3.0, 1.0]), 10)) == [0, 1]
    assert sorted(_chosen("evokd", _signals(3), 10)) == [0, 1, 2]


def test_softmax_prefers_high_scores_but_is_not_deterministic():
    scores = np.array([5.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    picks = [selection.select(scores, 1, "softmax", 1.0, seed=s)[0] for s in range(200)]
    share = np.mean(np.array(picks) == 0)
    expected = np.exp(5) / (np.exp(5) + 5)
    assert abs(share - expected) < 0.06
    assert len(set(picks)) > 1


def test_softmax_temperature_flattens_the_choice():
    scores = np.array([2.0, 0.0, 0.0, 0.0])
    cold = np.mean([selection.select(scores, 1, "softmax", 0.1, seed=s)[0] == 0 for s in range(300)])
    hot = np.mean([selection.select(scores, 1, "softmax", 100.0, seed=s)[0] == 0 for s in range(300)])
    assert cold > 0.95 and 0.15 < hot < 0.4


def test_softmax_goes_through_choose_for_score_strategies():
    s = _signals(6, loss=[5.0, 0, 0, 0, 0, 0])
    picks = {_chosen("loss_high", s, 1, sampling="softmax", seed=k)[0] for k in range(100)}
    assert 0 in picks and len(picks) > 1


def test_softmax_is_refused_for_set_strategies_in_code_and_config():
    with pytest.raises(ValueError, match="evokd"):
        selection.choose("evokd", _signals(4), 2, sampling="softmax")
    with pytest.raises(ConfigError, match="sampling"):
        build_config({"task": {"name": "game24"}, "loop": {"strategy": "lion", "sampling": "softmax"}})


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*loss_high"):
        selection.choose("nope", _signals(1), 1)


def test_missing_signal_is_named():
    with pytest.raises(ValueError, match="'reward'"):
        selection.choose("reward_low", _signals(3), 1)


def test_nan_signal_is_rejected_with_the_seed_id():
    with pytest.raises(ValueError, match="s1"):
        selection.choose("loss_high", _signals(2, loss=[1.0, float("nan")]), 1)


def test_signals_from_predictions_read_loss_and_correct():
    rows = [{"id": f"s{i}", "prediction": "x", "output_tokens": 3, "loss": float(i), "confidence": 0.5, "correct": i == 1} for i in range(3)]
    s = Signals.from_predictions(make_table(PREDICTIONS, rows), reward=np.ones(3))
    assert s.ids == ["s0", "s1", "s2"] and list(s.loss) == [0.0, 1.0, 2.0] and list(s.correct) == [False, True, False]


def test_the_domain_strategy_specs_match_the_driver_registry():
    # config validation reads loopdistill.strategy_specs; drivers/strategies.py holds the implementations
    from drivers.strategies import STRATEGIES
    from loopdistill.strategy_specs import STRATEGY_SPECS

    assert set(STRATEGY_SPECS) == set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert STRATEGY_SPECS[name].needs == strategy.needs, name
        assert STRATEGY_SPECS[name].picks_set == (not strategy.score_based), name


def test_the_library_imports_beside_a_users_own_tasks_folder(tmp_path):
    # A notebook directory with its own `tasks/` package used to shadow the library's top-level `tasks`
    # (ImportError: cannot import name 'Task' from 'tasks'); the tasks now live in loopdistill.tasks.
    import subprocess
    import sys

    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("MINE = True\n")
    code = ("import tasks; assert tasks.MINE\n"
            "from loopdistill import load_config, run\n"
            "from loopdistill.tasks import Task, get_task\n"
            "print(get_task('game24').name)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "game24"
