import numpy as np
import pytest

from drivers import selection
from loopdistill.schemas import PREDICTIONS, make_table


def _predictions(losses):
    return make_table(
        PREDICTIONS,
        [
            {"id": f"s{i}", "prediction": "x", "output_tokens": 3, "loss": l, "confidence": 0.5, "correct": False}
            for i, l in enumerate(losses)
        ],
    )


def test_loss_high_selects_highest_loss_seeds():
    preds = _predictions([0.1, 2.0, 0.5, 3.0, 1.0])
    scores = selection.score("loss_high", preds, seed=0).column("score").to_numpy()
    assert list(selection.select(scores, 2)) == [3, 1]


def test_loss_low_selects_lowest_loss_seeds():
    preds = _predictions([0.1, 2.0, 0.5, 3.0, 1.0])
    scores = selection.score("loss_low", preds, seed=0).column("score").to_numpy()
    assert list(selection.select(scores, 2)) == [0, 2]


def test_random_is_reproducible_and_seed_dependent():
    preds = _predictions([1.0] * 50)
    a = selection.score("random", preds, seed=1).column("score").to_numpy()
    b = selection.score("random", preds, seed=1).column("score").to_numpy()
    c = selection.score("random", preds, seed=2).column("score").to_numpy()
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_argmax_ties_break_by_index():
    assert list(selection.select(np.array([1.0, 1.0, 1.0]), 2)) == [0, 1]


def test_m_larger_than_pool_selects_all():
    assert sorted(selection.select(np.array([3.0, 1.0]), 10)) == [0, 1]


def test_softmax_prefers_high_scores_but_is_not_deterministic():
    scores = np.array([5.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    picks = [selection.select(scores, 1, "softmax", 1.0, seed=s)[0] for s in range(200)]
    share = np.mean(np.array(picks) == 0)
    expected = np.exp(5) / (np.exp(5) + 5)
    assert abs(share - expected) < 0.06
    assert len(set(picks)) > 1


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*loss_high"):
        selection.score("nope", _predictions([1.0]), seed=0)


def test_nan_loss_is_rejected_with_id():
    with pytest.raises(ValueError, match="s1"):
        selection.score("loss_high", _predictions([1.0, float("nan")]), seed=0)
