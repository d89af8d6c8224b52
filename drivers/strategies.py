"""Every selection strategy phi of Kessler et al. 2025 ("Towards Active Synthetic Data Generation for
Finetuning Language Models", arXiv 2512.00884, Sec. 3 and Table 1), by name.

A strategy is a score per seed (higher = harder = selected first) and, for the strategies that choose a
*set* rather than the top of a ranking (random, incorrect, evokd, lion, badge), a picker. Score-based
strategies are selected by `drivers.selection.select` (argmax or softmax sampling). Pure numpy: the
driver gathers the signals a strategy needs (`needs`) into a `drivers.signals.Signals` before it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from drivers.badge import kmeans_pp_seeding
from drivers.signals import Signals

ScoreFn = Callable[[Signals, np.random.Generator], np.ndarray]
PickFn = Callable[[Signals, int, np.random.Generator], np.ndarray]

#: LION's split: a judge gap (teacher score - student score, 1-10 scale) of at least 1 is "hard"
#: (Jiang et al. 2023, "Lion: Adversarial Distillation of Proprietary Large Language Models", Sec. 2.3).
LION_HARD_GAP = 1.0


@dataclass(frozen=True)
class Strategy:
    """One selection strategy.

    score: (n,) float scores from the Signals of n seeds; higher = selected first.
    needs: signal names beyond the student's predictions: "gt_loss", "reward", "judge", "embedding".
    pick: chooses m row indices itself (set selection); None = take the top m of `score` (or sample).
    source: where the strategy comes from.
    """

    score: ScoreFn
    needs: tuple[str, ...] = ()
    pick: Optional[PickFn] = None
    source: str = ""

    @property
    def score_based(self) -> bool:
        """True when selection ranks by score, so argmax/softmax sampling applies."""
        return self.pick is None


def _random_order(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.asarray(idx, dtype=np.int64))


def balanced_pick(groups: list[np.ndarray], m: int, rng: np.random.Generator) -> np.ndarray:
    """m indices drawn uniformly at random, as equally as possible from each group (a group with too
    few members gives all it has; the others fill the rest). Groups are disjoint index arrays."""
    shuffled = [list(_random_order(g, rng)) for g in groups]
    quota = [len(g) for g in shuffled]
    take = [0] * len(groups)
    for _ in range(min(m, sum(quota))):
        # Next slot goes to the group with the fewest picks that still has members.
        open_groups = [i for i in range(len(groups)) if take[i] < quota[i]]
        take[min(open_groups, key=lambda i: (take[i], i))] += 1
    picked = [g[:n] for g, n in zip(shuffled, take)]
    return np.array([i for part in picked for i in part], dtype=np.int64)


# --- scores -------------------------------------------------------------------------------------
def _uniform(s: Signals, rng: np.random.Generator) -> np.ndarray:
    return rng.random(len(s.ids))


def _loss(s: Signals, rng: np.random.Generator) -> np.ndarray:
    return s.need("loss")


def _incorrect(s: Signals, rng: np.random.Generator) -> np.ndarray:
    return 1.0 - s.need("correct").astype(float)


def _embedding_norm(s: Signals, rng: np.random.Generator) -> np.ndarray:
    # BADGE's gradient-embedding norm grows with the loss: the "uncertainty" half of the method.
    return np.linalg.norm(s.need("embedding"), axis=1)


# --- set pickers --------------------------------------------------------------------------------
def _pick_random(s: Signals, m: int, rng: np.random.Generator) -> np.ndarray:
    return _random_order(np.arange(len(s.ids)), rng)[:m]


def _pick_incorrect(s: Signals, m: int, rng: np.random.Generator) -> np.ndarray:
    wrong = s.need("correct") == 0
    first = _random_order(np.flatnonzero(wrong), rng)
    rest = _random_order(np.flatnonzero(~wrong), rng)
    return np.concatenate([first, rest])[:m]


def _pick_evokd(s: Signals, m: int, rng: np.random.Generator) -> np.ndarray:
    correct = s.need("correct").astype(bool)
    return balanced_pick([np.flatnonzero(~correct), np.flatnonzero(correct)], m, rng)


def _pick_lion(s: Signals, m: int, rng: np.random.Generator) -> np.ndarray:
    hard = s.need("judge_gap") >= LION_HARD_GAP
    return balanced_pick([np.flatnonzero(hard), np.flatnonzero(~hard)], m, rng)


def _pick_badge(s: Signals, m: int, rng: np.random.Generator) -> np.ndarray:
    return kmeans_pp_seeding(s.need("embedding"), m, rng)


STRATEGIES: dict[str, Strategy] = {
    "random": Strategy(_uniform, pick=_pick_random, source="uniform seeds: static generation (Table 1 baseline)"),
    "loss_high": Strategy(_loss, source="student NLL of its own greedy answer, highest first (Sec. 3)"),
    "loss_low": Strategy(lambda s, r: -_loss(s, r), source="the easiest seeds first (Sec. 3 ablation)"),
    "gt_loss_high": Strategy(
        lambda s, r: s.need("gt_loss"), needs=("gt_loss",), source="student NLL of the ground-truth answer (Sec. 3)"
    ),
    "reward_low": Strategy(
        lambda s, r: -s.need("reward"), needs=("reward",), source="lowest reward r(x, y_hat) first (Sec. 3)"
    ),
    "reward_high": Strategy(
        lambda s, r: s.need("reward"), needs=("reward",), source="highest reward r(x, y_hat) first (Sec. 3)"
    ),
    "judge_hard": Strategy(
        lambda s, r: s.need("judge_gap"), needs=("judge",),
        source="pairwise LLM judge, teacher minus student score, both orders (Zheng et al. 2023, Sec. 3)",
    ),
    "lion": Strategy(
        lambda s, r: s.need("judge_gap"), needs=("judge",), pick=_pick_lion,
        source="judge gap >= 1 is hard, else easy; equal draws from both (Jiang et al. 2023, LION, Sec. 2.3)",
    ),
    "incorrect": Strategy(
        _incorrect, pick=_pick_incorrect, source="seeds the student answers wrongly, by the verifier (Sec. 3)"
    ),
    "evokd": Strategy(
        _incorrect, pick=_pick_evokd,
        source="equal mix of wrongly and correctly answered seeds (Liu et al. 2024, EvoKD, Sec. 3.2)",
    ),
    "badge": Strategy(
        _embedding_norm, needs=("embedding",), pick=_pick_badge,
        source="k-means++ seeding over last-layer gradient embeddings (Ash et al. 2020, BADGE, Sec. 3)",
    ),
}
