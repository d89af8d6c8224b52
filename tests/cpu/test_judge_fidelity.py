"""Judge prompts and verdicts (and the teacher judging them), rejection sampling, and the fidelity
metrics (real tasks)."""
from collections import Counter

import numpy as np
import pytest

from drivers import fidelity, judge
from drivers.synthesis import Candidate, accepted_answers, build_synthetic
from loopdistill.judging import judge_prompt, parse_verdict, verifier_verdict
from loopdistill.models import load_tokenizer
from loopdistill.schemas import JUDGE_REQUESTS, JUDGE_SENDS, TEACHER_RESPONSES, make_table
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


def test_judge_prompt_text_is_unchanged():
    # The text is the request-cache key and what the teacher is paid to read: it must not drift.
    prompt = judge_prompt(" What is 1+1?\n", "It is 2.", "It is\n3. ")
    assert prompt == (
        "[Judge] Act as an impartial judge. Evaluate the correctness and reasoning of the two answers to the "
        "question below. Do not let the order of the answers or their length influence you. Reply with exactly "
        'one line: "Score A: <1-10>; Score B: <1-10>".\n'
        "[Question]\nWhat is 1+1?\n[Answer A]\nIt is 2.\n[Answer B]\nIt is\n3.\n[End]"
    )


def test_both_orders_are_averaged_to_cancel_position_bias():
    seeds = [{"id": "a", "question": "q"}, {"id": "b", "question": "q2"}]
    requests = judge.judge_requests(seeds, ["T1", "T2"], ["S1", "S2"], iteration=0)
    assert requests.schema == JUDGE_REQUESTS
    assert requests.column("request_id").to_pylist() == ["it0-judge-ab-a", "it0-judge-ba-a", "it0-judge-ab-b", "it0-judge-ba-b"]
    assert requests.slice(0, 2).to_pylist() == [
        {"request_id": "it0-judge-ab-a", "question": "q", "answer_a": "T1", "answer_b": "S1"},
        {"request_id": "it0-judge-ba-a", "question": "q", "answer_a": "S1", "answer_b": "T1"},
    ]
    # A judge that always prefers position A by 2 points: after averaging, seed a's gap is what is left.
    replies = ["Score A: 9; Score B: 5", "Score A: 7; Score B: 7", "no idea", "Score A: 4; Score B: 6"]
    v = judge.parse_verdicts(_responses(replies), 2)
    assert v.teacher_score[0] == pytest.approx(8.0) and v.student_score[0] == pytest.approx(6.0)
    assert v.gap[1] == pytest.approx(6.0 - 4.0)  # only the "ba" order parsed: teacher was B
    assert v.unparseable == 1


def test_verifier_verdict_scores_game24_answers_by_the_verifier():
    task = get_task("game24")
    question = question_for([4, 6, 1, 1])
    good, bad = "4 * 6 = 24\nAnswer: 4 * 6 * 1 * 1 = 24", "Answer: 4 + 6 + 1 + 1 = 24"
    assert parse_verdict(verifier_verdict(task, question, good, bad)) == (10.0, 1.0)
    assert parse_verdict(verifier_verdict(task, question, bad, good)) == (1.0, 10.0)


# --- the teacher judging: TeacherActor.judge / TeacherPool.judge --------------------------------------
GOOD, BAD = "4 * 6 = 24\nAnswer: 4 * 6 * 1 * 1 = 24", "Answer: 4 + 6 + 1 + 1 = 24"


def _judge_sends(teacher, requests):
    """JUDGE_SENDS as the teacher client builds them: the judge prompt of each row, counted once,
    seed 0 (greedy)."""
    rows = requests.to_pylist()
    prompts = [judge_prompt(r["question"], r["answer_a"], r["answer_b"]) for r in rows]
    counts = teacher.count_tokens(prompts)
    return make_table(JUDGE_SENDS, [{**r, "prompt": p, "seed": 0, "input_tokens": n} for r, p, n in zip(rows, prompts, counts)])


def _game24_judge_requests():
    seeds = [{"id": "a", "question": question_for([4, 6, 1, 1])}, {"id": "b", "question": question_for([1, 2, 3, 4])}]
    return judge.judge_requests(seeds, [GOOD, "Answer: 1 * 2 * 3 * 4 = 24"], [BAD, "Answer: 1 + 2 + 3 + 4 = 24"], iteration=1)


def _teacher(tmp_path, **config):
    from actors.teacher import TeacherActor
    from loopdistill.config import TeacherConfig

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=3, **config)
    return TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"))


def test_teacher_judges_with_the_verifier_and_pays_each_judgement_once(tmp_path):
    """The programmatic teacher judges by its verifier (no prompt parsing); verdicts come back in
    order, are journaled at the caller's counts and served from the cache when asked again."""
    import json

    from actors.request_cache import journal_totals

    teacher = _teacher(tmp_path)
    sends = _judge_sends(teacher, _game24_judge_requests())
    out = teacher.judge(sends, max_new_tokens=16)
    assert out.column("request_id").to_pylist() == sends.column("request_id").to_pylist()
    assert out.column("text").to_pylist() == ["Score A: 10; Score B: 1", "Score A: 1; Score B: 10"] * 2
    assert out.column("input_tokens").to_pylist() == sends.column("input_tokens").to_pylist()
    v = judge.parse_verdicts(out, 2)
    assert list(v.gap) == [9.0, 9.0] and v.unparseable == 0
    reserved = [rec["input_tokens"] for rec in map(json.loads, open(tmp_path / "journal.jsonl")) if rec["op"] == "reserve"]
    assert reserved == sends.column("input_tokens").to_pylist()
    again = _teacher(tmp_path).judge(sends, max_new_tokens=16)  # e.g. a resumed run
    assert all(again.column("cached").to_pylist()) and again.column("text").equals(out.column("text"))
    assert journal_totals(tmp_path / "journal.jsonl")["requests"] == 4  # nothing sent twice


def test_judgements_cached_before_the_refactor_are_found(tmp_path):
    """The judge's cache key is unchanged: request_key(namespace, judge prompt, greedy params with
    seed 0), as the pre-refactor loop stored it (a generate call at temperature 0)."""
    from actors.engines.base import Generation, SamplingParams
    from actors.request_cache import RequestCache, request_key

    teacher = _teacher(tmp_path, max_new_tokens=300)
    sends = _judge_sends(teacher, _game24_judge_requests())
    prompt = sends.column("prompt")[0].as_py()
    old_key = request_key(teacher.cache_namespace(), prompt, SamplingParams(16, 0.0, 0.95, seed=0))
    RequestCache(tmp_path / "cache.sqlite").put_many([(old_key, Generation("Score A: 3; Score B: 4", 50, 9))])
    out = teacher.judge(sends, max_new_tokens=16)
    assert out.column("cached").to_pylist() == [True, False, False, False]
    assert out.column("text")[0].as_py() == "Score A: 3; Score B: 4"


def test_teacher_refuses_a_judge_prompt_that_is_not_its_items(tmp_path):
    from loopdistill.schemas import SchemaError

    teacher = _teacher(tmp_path)
    sends = _judge_sends(teacher, _game24_judge_requests())
    prompts = sends.column("prompt").to_pylist()
    prompts[1] = prompts[0]  # would be cached and paid under another judgement's key
    bad = sends.set_column(sends.schema.get_field_index("prompt"), JUDGE_SENDS.field("prompt"), [prompts])
    with pytest.raises(ValueError, match="it1-judge-ba-a"):
        teacher.judge(bad, max_new_tokens=16)
    with pytest.raises(SchemaError, match="missing column 'prompt'"):
        teacher.judge(_game24_judge_requests(), max_new_tokens=16)


def test_pool_answers_and_judges_like_one_replica(ray_local, tmp_path):
    """TeacherPool shards sends over replicas; each request keeps its own seed, so two replicas
    return what one does (same texts, in order), and the shared journal counts every send once."""
    from actors.group import ResourceSpec
    from actors.teacher_pool import TeacherPool
    from loopdistill.config import TeacherConfig
    from test_request_cache import sends_for

    config = TeacherConfig(engine="programmatic", model={"path": "tiny-random-llama"}, batch_size=2)
    one = _teacher(tmp_path / "one")
    prompts = [get_task("game24").answer_prompt(question_for(n)) for n in ([1, 1, 4, 6], [2, 3, 4, 12], [4, 9, 10, 13])]
    sends = sends_for(prompts, one.count_tokens(prompts), run_seed=4, iteration=1, purpose="answer")
    judge_sends = _judge_sends(one, _game24_judge_requests())
    pool = TeacherPool(config, "game24", ResourceSpec("teacher", replicas=2, num_cpus=1),
                       str(tmp_path / "pool" / "cache.sqlite"), str(tmp_path / "pool" / "journal.jsonl"))
    try:
        answers = pool.generate(sends, max_new_tokens=64)
        verdicts = pool.judge(judge_sends, max_new_tokens=16)
        paid = pool.paid()
    finally:
        pool.shutdown()
    assert answers.column("text").equals(one.generate(sends, max_new_tokens=64).column("text"))
    assert verdicts.column("text").equals(one.judge(judge_sends, max_new_tokens=16).column("text"))
    assert verdicts.column("request_id").to_pylist() == judge_sends.column("request_id").to_pylist()
    assert paid["requests"] == 7 and paid["open"] == 0


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
