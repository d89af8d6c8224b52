"""Step 4 of Algorithm 1: teacher requests from selected seeds, parsing, and near-duplicate filtering.

Source: Kessler et al. 2025, arXiv 2512.00884, Algorithm 1 (question rewrite with k few-shot seeds, then
an answer with chain of thought; drop questions whose ROUGE-L against earlier synthetic questions
exceeds 0.7, after Self-Instruct, Wang et al. 2023, Sec. 2.3).
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa

from drivers.near_duplicates import TokenIndex
from loopdistill.schemas import SYNTHETIC, TEACHER_REQUESTS, TEACHER_RESPONSES, make_table, require_columns
from loopdistill.tasks import Task


@dataclass
class Candidate:
    """A parsed synthetic question waiting for its answer; token counts accumulate both requests."""

    parent_id: str
    question: str
    input_tokens: int
    output_tokens: int


def rewrite_requests(task: Task, selected: list[dict], pool: list[dict], k: int, iteration: int, seed: int) -> pa.Table:
    """TEACHER_REQUESTS, one per selected seed (SEEDS row dicts), each with k few-shot examples drawn
    from the pool D0 without the selected seed itself."""
    rng = random.Random(f"{seed}-{iteration}")
    rows = []
    for row in selected:
        others = [p for p in pool if p["id"] != row["id"]]
        shots = rng.sample(others, min(k, len(others)))
        rows.append({"request_id": f"it{iteration}-rewrite-{row['id']}", "prompt": task.rewrite_prompt(row, shots)})
    return make_table(TEACHER_REQUESTS, rows)


def parse_rewrites(task: Task, selected: list[dict], responses: pa.Table) -> tuple[list[Candidate], int]:
    """Candidates from rewrite responses (in request order) and the count that could not be parsed."""
    require_columns(responses, TEACHER_RESPONSES, "parse_rewrites")
    out, bad = [], 0
    for row, resp in zip(selected, responses.to_pylist()):
        question = task.parse_rewrite(resp["text"])
        if question is None:
            bad += 1
            continue
        out.append(Candidate(row["id"], question, resp["input_tokens"], resp["output_tokens"]))
    return out, bad


class Deduplicator:
    """Drops exact duplicates (by `Task.dedup_key`) and, for tasks with `rouge_dedup`, questions whose
    ROUGE-L F-measure against an earlier one exceeds `threshold` (in (0, 1]; computed with rapidfuzz on
    rouge-score's tokens, `drivers.near_duplicates`: one candidate against N questions is one vectorised
    call, about 0.1-1 us a pair instead of rouge-score's hundreds)."""

    def __init__(self, task: Task, threshold: float):
        self.task = task
        self.threshold = threshold

    def filter(self, candidates: list[Candidate], earlier: list[str]) -> tuple[list[Candidate], int]:
        """Keep candidates unlike every earlier question and every candidate kept before them.
        Returns (kept, number dropped)."""
        kept = []
        keys = {self.task.dedup_key(q) for q in earlier}
        index = TokenIndex(earlier) if self.task.rouge_dedup else None
        for cand in candidates:
            key = self.task.dedup_key(cand.question)
            if key in keys:
                continue
            if index is not None:
                if index.nearest(cand.question)[0] > self.threshold:
                    continue
                index.add(cand.question)
            kept.append(cand)
            keys.add(key)
        return kept, len(candidates) - len(kept)


def answer_requests(task: Task, candidates: list[Candidate], iteration: int, response: int = 0) -> pa.Table:
    """TEACHER_REQUESTS asking the teacher to answer each candidate question with reasoning; `response`
    numbers the r-th of several answers per question (rejection sampling)."""
    suffix = f"-r{response}" if response else ""
    rows = [
        {"request_id": f"it{iteration}-answer-{c.parent_id}{suffix}", "prompt": task.answer_prompt(c.question)}
        for c in candidates
    ]
    return make_table(TEACHER_REQUESTS, rows)


def accepted_answers(task: Task, question: str, texts: list[str]) -> tuple[list[int], Optional[str]]:
    """Rejection sampling over r teacher answers to one question: (indices kept, their reference).

    With a reference derivable from the question alone (`Task.question_reference`, e.g. a Game of 24
    puzzle) every answer the verifier accepts is kept. Otherwise the final answers vote and the answers
    agreeing with the majority are kept (self-consistency, Wang et al. 2023, Sec. 2; ties go to the
    answer seen first). An answer without an extractable final answer never counts.
    """
    reference = task.question_reference(question)
    if reference is None:
        votes = Counter(r for r in (task.reference_for(question, t) for t in texts) if r is not None)
        if not votes:
            return [], None
        reference = votes.most_common(1)[0][0]
    kept = [j for j, text in enumerate(texts) if task.verify(text, reference)]
    return kept, reference if kept else None


def build_synthetic(
    task: Task, candidates: list[Candidate], responses: list[pa.Table], iteration: int, strategy: str
) -> tuple[pa.Table, int]:
    """SYNTHETIC rows from answered candidates, and the count of teacher answers dropped.

    responses: r TEACHER_RESPONSES tables (r answers per question), each aligned with `candidates`
    (a shorter table, cut by the budget, leaves its missing rows unanswered). Kept answers follow
    `accepted_answers`: unparseable ones, ones the verifier rejects and minority answers are dropped and
    counted, never crash the iteration. A row's token columns hold its own answer's tokens, plus the
    rewrite's tokens on the first kept row of its question (so the columns sum without double counting).
    """
    for table in responses:
        require_columns(table, TEACHER_RESPONSES, "build_synthetic")
    texts_of = [table.to_pylist() for table in responses]
    rows, dropped = [], 0
    for i, cand in enumerate(candidates):
        answers = [t[i] for t in texts_of if i < len(t)]
        kept, reference = accepted_answers(task, cand.question, [a["text"] for a in answers])
        dropped += len(answers) - len(kept)
        for n, j in enumerate(kept):
            suffix = f"-r{j}" if len(responses) > 1 else ""
            rows.append(
                {
                    "id": f"syn-it{iteration}-{cand.parent_id}{suffix}",
                    "parent_id": cand.parent_id,
                    "iteration": iteration,
                    "strategy": strategy,
                    "question": cand.question,
                    "answer": answers[j]["text"].strip(),
                    "reference": reference,
                    "teacher_input_tokens": answers[j]["input_tokens"] + (cand.input_tokens if n == 0 else 0),
                    "teacher_output_tokens": answers[j]["output_tokens"] + (cand.output_tokens if n == 0 else 0),
                }
            )
    return make_table(SYNTHETIC, rows), dropped
