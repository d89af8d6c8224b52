"""The judge_hard / lion signal: the teacher answers each seed, then judges its answer against the
student's in both orders (MT-Bench pairwise, Zheng et al. 2023, Sec. 3.1/3.3; LION, Jiang et al. 2023,
Sec. 2.3). Pure request building and parsing; the driver sends the requests through the teacher client,
so every judge token is charged to the teacher budget.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from loopdistill.judging import parse_verdict
from loopdistill.schemas import JUDGE_REQUESTS, TEACHER_REQUESTS, TEACHER_RESPONSES, make_table, require_columns
from loopdistill.tasks import Task


@dataclass
class Verdicts:
    """Per seed (n): the teacher's and the student's mean judge score (1-10) and the gap between them;
    `unparseable` counts judge replies without a readable score pair (both orders unreadable: gap 0)."""

    teacher_score: np.ndarray
    student_score: np.ndarray
    unparseable: int

    @property
    def gap(self) -> np.ndarray:
        return self.teacher_score - self.student_score


def teacher_answer_requests(task: Task, seeds: list[dict], iteration: int) -> pa.Table:
    """TEACHER_REQUESTS: the teacher answers each seed question (SEEDS row dicts) itself."""
    rows = [{"request_id": f"it{iteration}-judge-answer-{s['id']}", "prompt": task.answer_prompt(s["question"])} for s in seeds]
    return make_table(TEACHER_REQUESTS, rows)


def judge_requests(seeds: list[dict], teacher_answers: list[str], student_answers: list[str], iteration: int) -> pa.Table:
    """JUDGE_REQUESTS: two per seed (SEEDS row dicts, with the teacher's and the student's answer
    text at the same position), teacher's answer first ("ab") and student's answer first ("ba")."""
    rows = []
    for seed, teacher, student in zip(seeds, teacher_answers, student_answers):
        question = seed["question"]
        rows.append({"request_id": f"it{iteration}-judge-ab-{seed['id']}", "question": question, "answer_a": teacher, "answer_b": student})
        rows.append({"request_id": f"it{iteration}-judge-ba-{seed['id']}", "question": question, "answer_a": student, "answer_b": teacher})
    return make_table(JUDGE_REQUESTS, rows)


def parse_verdicts(responses: pa.Table, n: int) -> Verdicts:
    """Verdicts of n seeds from the 2n judge responses (in `judge_requests` order): each answer's
    score averaged over the orders whose reply parsed."""
    require_columns(responses, TEACHER_RESPONSES, "parse_verdicts")
    texts = responses.column("text").to_pylist()
    teacher, student, bad = np.zeros(n), np.zeros(n), 0
    for i in range(n):
        ab, ba = parse_verdict(texts[2 * i]), parse_verdict(texts[2 * i + 1])
        bad += (ab is None) + (ba is None)
        pairs = [p for p in (ab, (ba[1], ba[0]) if ba else None) if p is not None]  # as (teacher, student)
        if pairs:
            teacher[i] = np.mean([p[0] for p in pairs])
            student[i] = np.mean([p[1] for p in pairs])
    return Verdicts(teacher, student, bad)
