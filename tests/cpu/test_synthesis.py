
from drivers import synthesis
from loopdistill.schemas import TEACHER_RESPONSES, make_table
from loopdistill.tasks import get_task


def test_rouge_dedup_drops_near_duplicates_of_earlier_and_within_batch():
    dedup = synthesis.Deduplicator(get_task("gsm8k"), 0.7)
    earlier = ["Tom has 3 apples and buys 5 more apples. How many apples does Tom have now?"]
    cands = [
        synthesis.Candidate("a", "Tom has 4 apples and buys 5 more apples. How many apples does Tom have now?", 1, 1),
        synthesis.Candidate("b", "A train travels 60 km per hour for 3 hours. How far does it travel?", 1, 1),
        synthesis.Candidate("c", "A train travels 70 km per hour for 3 hours. How far does it travel?", 1, 1),
        synthesis.Candidate("d", "Mia bakes 12 cookies for each of her 4 friends and eats 3. How many are left?", 1, 1),
    ]
    kept, dropped = dedup.filter(cands, earlier)
    assert [c.parent_id for c in kept] == ["b", "d"]
    assert dropped == 2


def test_game24_dedup_is_by_puzzle_not_template():
    task = get_task("game24")
    from loopdistill.tasks.game24 import question_for

    dedup = synthesis.Deduplicator(task, 0.7)
    cands = [synthesis.Candidate(p, question_for(n), 1, 1) for p, n in (("a", [1, 2, 3, 4]), ("b", [4, 3, 2, 1]), ("c", [1, 2, 3, 5]))]
    kept, dropped = dedup.filter(cands, [question_for([1, 1, 4, 6])])
    assert [c.parent_id for c in kept] == ["a", "c"] and dropped == 1


def test_unparseable_teacher_outputs_are_counted_not_raised():
    task = get_task("gsm8k")
    selected = [{"id": "s1"}, {"id": "s2"}]
    responses = make_table(
        TEACHER_RESPONSES,
        [
            {"request_id": "r1", "text": "New question: Ann has 7 pens and buys 3 boxes of 4 pens. How many pens now?", "input_tokens": 10, "output_tokens": 5, "cached": False},
            {"request_id": "r2", "text": "I cannot help with that.", "input_tokens": 10, "output_tokens": 5, "cached": False},
        ],
    )
    cands, bad = synthesis.parse_rewrites(task, selected, responses)
    assert bad == 1 and len(cands) == 1 and cands[0].parent_id == "s1"
    answers = make_table(
        TEACHER_RESPONSES,
        [{"request_id": "a1", "text": "7 + 3 * 4 = 19. The answer is 19.", "input_tokens": 4, "output_tokens": 6, "cached": False}],
    )
    table, bad_answers = synthesis.build_synthetic(task, cands, [answers], iteration=0, strategy="loss_high")
    assert bad_answers == 0 and table.num_rows == 1
    row = table.to_pylist()[0]
    assert row["reference"] == "19" and row["parent_id"] == "s1"
    assert row["teacher_input_tokens"] == 14 and row["teacher_output_tokens"] == 11
    no_answer = make_table(TEACHER_RESPONSES, [{"request_id": "a1", "text": "no idea", "input_tokens": 1, "output_tokens": 1, "cached": False}])
    table, bad_answers = synthesis.build_synthetic(task, cands, [no_answer], 0, "loss_high")
    assert table.num_rows == 0 and bad_answers == 1


def test_rewrite_requests_exclude_the_selected_seed_from_few_shot():
    task = get_task("gsm8k")
    pool = [{"id": f"s{i}", "question": f"Question number {i}?", "answer": "The answer is 1.", "reference": "1"} for i in range(8)]
    reqs = synthesis.rewrite_requests(task, pool[:2], pool, k=5, iteration=0, seed=0)
    assert reqs.num_rows == 2
    prompt = reqs.column("prompt")[0].as_py()
    assert "Question number 0?" in prompt
    assert prompt.count("Question number") == 6  # the selected seed + 5 few-shot examples


def test_dedup_keeps_what_the_rouge_score_filter_kept_on_real_questions(shared_data):
    """Same decisions as the former rouge-score implementation (ROUGE-L F per pair, > 0.7 drops)."""
    import json
    import random

    from rouge_score import rouge_scorer

    questions = [json.loads(line)["question"] for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:160]]
    rng = random.Random(1)
    near = []
    for q in questions[100:160]:
        words = q.split()
        for _ in range(rng.choice([1, 3, 6])):  # some stay above 0.7, some fall below
            words[rng.randrange(len(words))] = "zebra"
        near.append(" ".join(words))
    earlier = questions[:100]
    cands = [synthesis.Candidate(str(i), q, 1, 1) for i, q in enumerate(questions[120:160] + near + questions[60:70])]
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    seen, expected = list(earlier), []
    for cand in cands:  # the old filter (keys are distinct here, so only ROUGE-L decides)
        if max(scorer.score(o, cand.question)["rougeL"].fmeasure for o in seen) > 0.7:
            continue
        expected.append(cand.parent_id)
        seen.append(cand.question)
    kept, dropped = synthesis.Deduplicator(get_task("gsm8k"), 0.7).filter(cands, earlier)
    assert [c.parent_id for c in kept] == expected
    assert dropped == len(cands) - len(expected) and 10 < dropped < 100 - 10
