"""What each selection strategy needs before it runs, by name: the part of the strategy registry
(drivers/strategies.py, which holds the scores and pickers) that config validation reads, so that the
domain layer imports no driver code. tests/cpu/test_selection.py checks that both name the same
strategies with the same needs."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StrategySpec:
    """needs: signals beyond the student's own predictions ("gt_loss", "reward", "judge", "embedding");
    picks_set: True when the strategy chooses a set by its own rule, so argmax/softmax sampling over its
    scores does not apply."""

    needs: tuple[str, ...] = ()
    picks_set: bool = False

    @property
    def forward_passes(self) -> set[str]:
        """The needs that take teacher-forced forward passes of the student (transformers engine only)."""
        return {"gt_loss", "embedding"} & set(self.needs)


STRATEGY_SPECS: dict[str, StrategySpec] = {
    "random": StrategySpec(picks_set=True),
    "loss_high": StrategySpec(),
    "loss_low": StrategySpec(),
    "gt_loss_high": StrategySpec(needs=("gt_loss",)),
    "reward_low": StrategySpec(needs=("reward",)),
    "reward_high": StrategySpec(needs=("reward",)),
    "judge_hard": StrategySpec(needs=("judge",)),
    "lion": StrategySpec(needs=("judge",), picks_set=True),
    "incorrect": StrategySpec(picks_set=True),
    "evokd": StrategySpec(picks_set=True),
    "badge": StrategySpec(needs=("embedding",), picks_set=True),
}
