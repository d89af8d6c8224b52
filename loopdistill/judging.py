"""The pairwise LLM-as-judge prompt and verdict format, shared by the driver and the teacher engines.

Pairwise comparison with a 1-10 score per answer, after MT-Bench (Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", Sec. 3.1 and Fig. 5); the driver asks both orders and
averages them, which cancels the position bias that paper measures (Sec. 3.3).
"""
from __future__ import annotations

import re
from typing import Optional

# Part of the prompt text only (no code parses it any more): the text is the request-cache key and
# is counted for the budget, so changing it would make earlier runs' judgements unfindable.
JUDGE_HEADER = "[Judge]"
_SCORE = re.compile(r"Score\s*([AB])\s*[:=]\s*(\d+(?:\.\d+)?)", re.I)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The prompt that asks for a 1-10 score of each of two answers to `question`."""
    return (
        f"{JUDGE_HEADER} Act as an impartial judge. Evaluate the correctness and reasoning of the two answers "
        "to the question below. Do not let the order of the answers or their length influence you. "
        'Reply with exactly one line: "Score A: <1-10>; Score B: <1-10>".\n'
        f"[Question]\n{question.strip()}\n[Answer A]\n{answer_a.strip()}\n[Answer B]\n{answer_b.strip()}\n[End]"
    )


def parse_verdict(text: str) -> Optional[tuple[float, float]]:
    """(score A, score B) from a judge's reply, or None when either is missing or outside 1-10."""
    found = {}
    for letter, value in _SCORE.findall(text):
        found.setdefault(letter.upper(), float(value))
    if set(found) != {"A", "B"} or not all(1.0 <= v <= 10.0 for v in found.values()):
        return None
    return found["A"], found["B"]


def verifier_verdict(task, question: str, answer_a: str, answer_b: str) -> str:
    """A judge reply without an LLM, for tasks whose verifier needs only the question (programmatic
    teachers): 10 for an answer the verifier accepts, 1 otherwise, in `parse_verdict`'s format.

    The texts are stripped as `judge_prompt` strips them, so the verdict is the one the verifier gives
    to what an LLM judge would read.
    """
    question = question.strip()
    scores = []
    for answer in (answer_a.strip(), answer_b.strip()):
        reference = task.reference_for(question, answer)
        scores.append(10 if reference is not None and task.verify(answer, reference) else 1)
    return f"Score A: {scores[0]}; Score B: {scores[1]}"
