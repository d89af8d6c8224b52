"""Judge prompts and verdicts, rejection sampling, and the fidelity metrics (pure logic, real tasks)."""
from collections import Counter

import numpy as np
import pytest

from drivers import fidelity, judge
from drivers.synthesis import Candidate, accepted_answers, build_synthetic
from loopdistill.judging import judge_prompt, parse_judge_prompt, parse_verdict, verifier_verdict
from loopdistill.models import load_tokenizer
from loopdistill.schemas import TEACHER_RESPONSES, make_table
from loopdistill.tasks import get_task
from loopdistill.tasks.game24 import question_for


def _responses(texts):
    return make_table(TEACHER_RESPONSES, [{"request_id": f"r{i}", "text": t, "input_tokens": 5, "output_tokens": 7, "cached": False} for i, t in enumerate(texts)])


@pytest.mark.parametrize("text,expected", [
    ("Score A: 8; Score B: 3", (8.0, 3.0)),
    ("After review.\nscore a = 2.5, Score B: 10", (2.5, 10.0)),
    ("Score A: 8", None),
    ("Score A: 11; Score B: 3", None),
    ("I like both.", None),
])
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_judge_prompt_round_trips():
    prompt = judge_prompt("What is 1+1?", "It is 2.", "It is\n3.")
    assert parse_judge_prompt(prompt) == ("What is 1+1?", "It is 2.", "It is\n3.")


def test_both_orders_are_averaged_to_cancel_position_bias():
    seeds = [{"id": "a", "question": "q"}, {"id": "b", "question": "q2"}]
    requests = judge.judge_requests(seeds, ["T1", "T2"], ["S1", "S2"], iteration=0)
    assert requests.column("request_id").to_pylist() == ["it0-judge-ab-a", "it0-judge-ba-a", "it0-judge-ab-b", "it0-judge-ba-b"]
    assert "[Answer A]\nT1" in requests.column("prompt")[0].as_py() and "[Answer A]\nS1" in requests.column("prompt")[1].as_py()
    # A judge that always prefers position A by 2 points: after averaging, seed a's gap is what is left.
    replies = ["Score A: 9; Score B: 5", "Score A: 7; Score B: 7", "no idea", "Score A: 4; Score B: 6"]
    v = judge.parse_verdicts(_responses(replies), 2)
    assert v.teacher_score[0] == pytest.approx(8.0) and v.student_score[0] == pytest.approx(6.0)
    assert v.gap[1] == pytest.approx(6.0 - 4.0)  # only the "ba" order parsed: teacher was B
    assert v.unparseable == 1


def test_verifier_verdict_scores_game24_answers_by_the_verifier():
    task = get_task("game24")
    prompt = judge_prompt(question_for([4, 6, 1, 1]), "4 * 6 = 24\nAnswer: 4 * 6 * 1 * 1 = 24", "Answer: 4 + 6 + 1 + 1 = 24")
    a, b = parse_verdict(verifier_verdict(task, prompt))
    assert (a, b) == (10.0, 1.0)


def test_rejection_sampling_majority_vote_without_a_question_reference():
    task = get_task("gsm8k")
    texts = ["5 + 3 = 8\n#### 8", "It is 9.\n#### 9", "5 + 3 = 8 so\n#### 8", "no number here"]
    kept, reference = accepted_answers(task, "Tom has 5 and gets 3. How many?", texts)
    assert kept == [0, 2] and reference == "8"


def test_rejection_sampling_keeps_every_verified_answer_with_a_question_reference():
    task = get_task("game24")
    question = question_for([4, 6, 1, 1])
    assert task.question_reference(question) == "1 1 4 6"
    texts = ["Answer: 4 * 6 * 1 * 1 = 24", "Answer: 4 + 6 + 1 + 1 = 24", "Answer: (4 * 6) / (1 * 1) = 24"]
    kept, _ = accepted_answers(task, question, texts)
    assert kept == [0, 2]


def test_build_synthetic_with_r_responses_keeps_majority_rows_and_counts_the_rest():
    task = get_task("gsm8k")
    cands = [Candidate("s1", "Ann has 2 and 2 more. How many?", 10, 20), Candidate("s2", "Bob has 1. How many?", 3, 4)]
    r0 = _responses(["2 + 2 = 4\n#### 4", "garbled"])
    r1 = _responses(["2 + 2 = 4\n#### 4", "He has 1.\n#### 1"])
    r2 = _responses(["2 + 2 = 5\n#### 5"])  # cut by the budget: s2 has no third answer
    table, dropped = build_synthetic(task, cands, [r0, r1, r2], iteration=1, strategy="random")
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == ["syn-it1-s1-r0", "syn-it1-s1-r1", "syn-it1-s2-r1"]
    assert dropped == 2  # s1's minority "5" and s2's unparseable answer
    assert rows[0]["teacher_input_tokens"] == 15 and rows[1]["teacher_input_tokens"] == 5  # rewrite counted once
    assert rows[2]["reference"] == "1"


def test_selection_summary_compares_selected_with_pool():
    out = fidelity.selection_summary(np.array([1.0, 2.0, 3.0, 10.0]), np.array([3, 2]))
    assert out["select/pool_mean_score"] == 4.0 and out["select/pool_median_score"] == 2.5
    assert out["select/selected_mean_score"] == 6.5 and out["select/selected_median_score"] == 6.5


def test_total_variation_bounds_and_value():
    assert fidelity.total_variation(Counter({1: 2, 2: 2}), Counter({1: 1, 2: 1})) == 0.0
    assert fidelity.total_variation(Counter({1: 3}), Counter({2: 5})) == 1.0
    assert fidelity.total_variation(Counter({1: 1, 2: 1}), Counter({1: 1})) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        fidelity.total_variation(Counter(), Counter({1: 1}))


def test_token_tv_distance_with_the_student_tokenizer():
    tok = load_tokenizer("tiny-random-llama")
    same = fidelity.token_tv_distance(tok, ["Tom has 3 apples."], ["Tom has 3 apples."])
    near = fidelity.token_tv_distance(tok, ["Tom has 3 apples."], ["Tom has 4 apples."])
    far = fidelity.token_tv_distance(tok, ["Tom has 3 apples."], ["zebra quantum flux"])
    assert same == 0.0 < near < far


def test_parent_child_spearman():
    parents = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    assert fidelity.parent_child_spearman(parents, [("a", 0.1), ("b", 0.2), ("c", 0.5), ("d", 0.9)]) == pytest.approx(1.0)
    assert fidelity.parent_child_spearman(parents, [("a", 4), ("b", 3), ("c", 2), ("d", 1)]) == pytest.approx(-1.0)
    assert fidelity.parent_child_spearman(parents, [("a", 1), ("b", 2)]) is None
