"""The pairwise LLM-as-judge prompt and verdict format, shared by the driver and the teacher engines.

Pairwise comparison with a 1-10 score per answer, after MT-Bench (Zheng et al. 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena", Sec. 3.1 and Fig. 5); the driver asks both orders and
averages them, which cancels the position bias that paper measures (Sec. 3.3).
"""
from __future__ import annotations

import re
from typing import Optional

JUDGE_HEADER = "[Judge]"
_SECTIONS = re.compile(r"\[Question\]\n(.*)\n\[Answer A\]\n(.*)\n\[Answer B\]\n(.*)\n\[End\]", re.S)
_SCORE = re.compile(r"Score\s*([AB])\s*[:=]\s*(\d+(?:\.\d+)?)", re.I)


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    """The prompt that asks for a 1-10 score of each of two answers to `question`."""
    return (
        f"{JUDGE_HEADER} Act as an impartial judge. Evaluate the correctness and reasoning of the two answers "
        "to the question below. Do not let the order of the answers or their length influence you. "
        'Reply with exactly one line: "Score A: <1-10>; Score B: <1-10>".\n'
        f"[Question]\n{question.strip()}\n[Answer A]\n{answer_a.strip()}\n[Answer B]\n{answer_b.strip()}\n[End]"
    )


def is_judge_prompt(prompt: str) -> bool:
    return prompt.startswith(JUDGE_HEADER)


def parse_judge_prompt(prompt: str) -> Optional[tuple[str, str, str]]:
    """(question, answer A, answer B) of a `judge_prompt`, or None."""
    match = _SECTIONS.search(prompt)
    return match.groups() if match else None


def parse_verdict(text: str) -> Optional[tuple[float, float]]:
    """(score A, score B) from a judge's reply, or None when either is missing or outside 1-10."""
    found = {}
    for letter, value in _SCORE.findall(text):
        found.setdefault(letter.upper(), float(value))
    if set(found) != {"A", "B"} or not all(1.0 <= v <= 10.0 for v in found.values()):
        return None
    return found["A"], found["B"]


def verifier_verdict(task, prompt: str) -> str:
    """A judge reply without an LLM, for tasks whose verifier needs only the question (programmatic
    teachers): 10 for an answer the verifier accepts, 1 otherwise."""
    parts = parse_judge_prompt(prompt)
    if parts is None:
        return "I cannot read this comparison."
    question, *answers = parts
    scores = []
    for answer in answers:
        reference = task.reference_for(question, answer)
        scores.append(10 if reference is not None and task.verify(answer, reference) else 1)
    return f"Score A: {scores[0]}; Score B: {scores[1]}"
