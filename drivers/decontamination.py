"""Decontamination: no validation or test question may reach the synthetic training set.

A synthetic question is contaminated when it names the same problem as an evaluation question (equal
`Task.dedup_key`, the task's normalised key: Game of 24 the sorted numbers, text tasks the lower-cased,
whitespace-collapsed text) or, for tasks whose questions are free text (`Task.rouge_dedup`), when its
ROUGE-L F against an evaluation question exceeds a threshold (the n-gram/LCS overlap checks of
decontamination studies, e.g. the 13-gram rule of Brown et al. 2020, Appendix C, and ROUGE-L as
Self-Instruct's near-duplicate measure, Wang et al. 2023, Sec. 2.3). For templated Game of 24 questions
the key is the whole problem: two puzzles sharing three numbers are different problems with different
solutions, so no near-duplicate rule applies there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from drivers.near_duplicates import TokenIndex
from loopdistill.tasks import Task


@dataclass(frozen=True)
class Match:
    """A contaminated question and the evaluation question it matched; `score` is 1.0 for an equal key,
    else the ROUGE-L F (in (threshold, 1])."""

    question: str
    evaluation_question: str
    score: float


class EvaluationIndex:
    """The validation and test questions of a run, indexed once for repeated checks.

    Args:
        task: supplies `dedup_key` and `rouge_dedup`.
        questions: every evaluation question (validation + test), any order.
        threshold: ROUGE-L F above which a question is a near-duplicate, in (0, 1].
    """

    def __init__(self, task: Task, questions: Sequence[str], threshold: float):
        if not 0 < threshold <= 1:
            raise ValueError(f"decontamination threshold must be in (0, 1], got {threshold}")
        self.task, self.threshold = task, threshold
        self.by_key = {task.dedup_key(q): q for q in questions}
        self.index = TokenIndex(list(questions)) if task.rouge_dedup else None

    def match(self, question: str) -> Optional[Match]:
        """The evaluation question `question` duplicates (equal key, or ROUGE-L F > threshold), or None."""
        same = self.by_key.get(self.task.dedup_key(question))
        if same is not None:
            return Match(question, same, 1.0)
        if self.index is not None:
            score, nearest = self.index.nearest(question)
            if score > self.threshold:
                return Match(question, nearest, score)
        return None


def decontaminate(items: list, index: EvaluationIndex) -> tuple[list, list[Match]]:
    """Split items with a `.question` (e.g. `drivers.synthesis.Candidate`s) into (kept, in order;
    one Match per dropped item). Pure: neither argument is changed."""
    kept, dropped = [], []
    for item in items:
        found = index.match(item.question)
        if found is None:
            kept.append(item)
        else:
            dropped.append(found)
    return kept, dropped


def evaluation_questions(*tables) -> list[str]:
    """The `question` column of each SEEDS table (validation, test), concatenated."""
    return [q for table in tables for q in table.column("question").to_pylist()]


def overlapping_keys(task: Task, splits: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(split a, split b, question) for every normalised key present in two of the named splits
    (e.g. {"seeds": [...], "validation": [...], "test": [...]}), in split order; [] when disjoint."""
    first: dict[str, tuple[str, str]] = {}
    out = []
    for name, questions in splits.items():
        local = set()
        for q in questions:
            key = task.dedup_key(q)
            if key in first and first[key][0] != name:
                out.append((first[key][0], name, q))
            elif key not in local:
                first.setdefault(key, (name, q))
            local.add(key)
    return out
