"""The per-seed signals a selection strategy reads, aligned with the rows of the seed pool.

Built by the driver from the student's PREDICTIONS plus whatever the strategy `needs` (the student's
loss on the reference answer, a reward, an LLM judge's verdict, BADGE gradient embeddings); pure data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa

from loopdistill.schemas import PREDICTIONS, require_columns


@dataclass
class Signals:
    """n seeds' signals (all arrays have n rows, in pool order).

    loss: mean NLL (nats/token) of the student's own greedy answer.
    correct: the task verifier on that answer (bool).
    gt_loss: mean NLL (nats/token) of the seed's reference answer under the student.
    reward: r(x, y_hat) of a reward model (logit) or a verifier (0/1).
    judge_gap: judge score of the teacher's answer minus the student's (1-10 scale, both orders averaged).
    embedding: (n, d) projected gradient embeddings (BADGE).
    """

    ids: list[str]
    loss: Optional[np.ndarray] = None
    correct: Optional[np.ndarray] = None
    gt_loss: Optional[np.ndarray] = None
    reward: Optional[np.ndarray] = None
    judge_gap: Optional[np.ndarray] = None
    embedding: Optional[np.ndarray] = None

    def need(self, name: str) -> np.ndarray:
        """The named signal. Raises ValueError when it was not gathered or holds a non-finite value
        (the seed id is named)."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"selection needs signal {name!r}, which was not gathered for this strategy")
        value = np.asarray(value)
        if value.dtype.kind == "f":
            rows = ~np.isfinite(value).reshape(len(self.ids), -1).all(axis=1)
            if rows.any():
                bad = [self.ids[i] for i in np.flatnonzero(rows)[:5]]
                raise ValueError(f"signal {name!r} is not finite for seed ids {bad}")
        return value

    @classmethod
    def from_predictions(cls, predictions: pa.Table, **extra) -> "Signals":
        """Signals with loss and correct from a PREDICTIONS table; `extra` sets the other fields."""
        require_columns(predictions, PREDICTIONS, "Signals.from_predictions")
        return cls(
            ids=predictions.column("id").to_pylist(),
            loss=np.asarray(predictions.column("loss").to_numpy(), dtype=float),
            correct=np.asarray(predictions.column("correct").to_numpy(zero_copy_only=False), dtype=bool),
            **extra,
        )
