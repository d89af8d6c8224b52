"""Decontamination (no validation/test question reaches synthetic data), the rapidfuzz ROUGE-L that the
near-duplicate filters use, and the splits' disjointness check at load."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from mlflow.tracking import MlflowClient
from rouge_score import rouge_scorer

from drivers import decontamination, synthesis
from drivers.loop import load_splits, run
from drivers.near_duplicates import TokenIndex, rouge_l_f
from loop_helpers import tiny_config
from loopdistill.config import build_config
from loopdistill.tasks import DataError, get_task
from loopdistill.tasks.game24 import question_for, read_puzzles


def _cand(parent: str, question: str) -> synthesis.Candidate:
    return synthesis.Candidate(parent, question, 1, 1)


def _real_questions(shared_data: Path) -> dict[str, list[str]]:
    gsm8k = [json.loads(line)["question"] for line in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()[:200]]
    game24 = [question_for(p) for p in read_puzzles(shared_data / "game24" / "24.csv")[:200]]
    prontoqa = [r["question"] for r in get_task("prontoqa").load_splits(str(shared_data / "prontoqa"), 60, 10, 10, 0).seeds.to_pylist()]
    return {"gsm8k": gsm8k, "game24": game24, "prontoqa": prontoqa}


def test_rapidfuzz_rouge_l_equals_rouge_score_on_real_questions(shared_data):
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(0)
    compared = 0
    for name, questions in _real_questions(shared_data).items():
        # pairs of unrelated questions, and near pairs (a question vs itself with a word changed)
        pairs = [tuple(rng.sample(questions, 2)) for _ in range(150)]
        for q in questions[:50]:
            words = q.split()
            words[rng.randrange(len(words))] = "seventeen"
            pairs.append((q, " ".join(words)))
        index = TokenIndex([b for _, b in pairs])
        matrix = index.scores([a for a, _ in pairs])
        for i, (a, b) in enumerate(pairs):
            expected = scorer.score(b, a)["rougeL"].fmeasure
            assert rouge_l_f(a, b) == pytest.approx(expected, abs=1e-12), (name, a, b)
            assert matrix[i, i] == pytest.approx(expected, abs=1e-12), (name, a, b)
            compared += 1
    assert compared == 600
    assert rouge_l_f("", "Tom has 3 apples.") == 0.0 == scorer.score("", "Tom has 3 apples.")["rougeL"].fmeasure


def test_rouge_l_decisions_at_the_threshold_are_rouge_scores():
    # F exactly at the threshold: 10 + 10 tokens sharing 7 in order. rouge-score's float steps give
    # 0.7000000000000001 (> 0.7: dropped); a plain 1 - 6/20 gives 0.7 (kept). Scores must be bit-equal.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs = []
    for m in range(1, 16):
        for n in range(1, 16):
            for shared in range(1, min(m, n) + 1):
                a = " ".join(f"w{i}" for i in range(m))
                b = " ".join([f"w{i}" for i in range(shared)] + [f"x{i}" for i in range(n - shared)])
                pairs.append((a, b))
    matrix = TokenIndex([a for a, _ in pairs]).scores([b for _, b in pairs])
    ties = 0
    for i, (a, b) in enumerate(pairs):
        expected = scorer.score(a, b)["rougeL"].fmeasure
        assert rouge_l_f(a, b) == expected and matrix[i, i] == expected, (a, b)
        ties += any(abs(expected - t) < 1e-12 and expected != t for t in (0.5, 0.6, 0.7, 0.8))
    assert ties > 10  # the cases where an approximate F would decide "> threshold" differently


def test_near_and_equal_test_questions_are_dropped_and_counted_gsm8k():
    task = get_task("gsm8k")
    test_q = "Tom has 3 apples and buys 5 more apples at the market. How many apples does Tom have now?"
    index = decontamination.EvaluationIndex(task, [test_q, "A train travels 60 km per hour for 3 hours. How far?"], 0.7)
    cands = [
        _cand("equal", "  tom has 3 apples and buys 5 more apples at the market.\nHow many apples does Tom have now?"),
        _cand("near", "Tom has 4 apples and buys 6 more apples at the market. How many apples does Tom have now?"),
        _cand("new", "Mia bakes 12 cookies for each of her 4 friends and eats 3. How many are left?"),
    ]
    kept, dropped = decontamination.decontaminate(cands, index)
    assert [c.parent_id for c in kept] == ["new"]
    assert [(m.question, m.evaluation_question) for m in dropped] == [(cands[0].question, test_q), (cands[1].question, test_q)]
    assert dropped[0].score == 1.0 and 0.7 < dropped[1].score < 1.0
    # the threshold is the configured one: at 0.95 the near question is no longer a match
    kept, dropped = decontamination.decontaminate(cands, decontamination.EvaluationIndex(task, [test_q], 0.95))
    assert [c.parent_id for c in kept] == ["near", "new"] and len(dropped) == 1


def test_equal_and_reworded_game24_test_puzzles_are_dropped_and_counted():
    task = get_task("game24")
    index = decontamination.EvaluationIndex(task, [question_for([4, 9, 10, 13]), question_for([1, 1, 4, 6])], 0.7)
    cands = [
        _cand("equal", question_for([4, 9, 10, 13])),
        # the same puzzle written differently (order, wording): near in text, equal on the key
        _cand("reworded", "Use the numbers 13 10 9 4 and basic arithmetic operations (+ - * /) to get 24."),
        _cand("three-shared", question_for([4, 9, 10, 12])),  # another problem: kept
        _cand("wide", question_for([4, 26, 10, 8])),
    ]
    kept, dropped = decontamination.decontaminate(cands, index)
    assert [c.parent_id for c in kept] == ["three-shared", "wide"]
    assert len(dropped) == 2 and {m.evaluation_question for m in dropped} == {question_for([4, 9, 10, 13])}


def _write_gsm8k(folder: Path, train: list[str], test: list[str]) -> Path:
    folder.mkdir()
    for name, questions in (("train", train), ("test", test)):
        rows = [{"question": q, "answer": f"Add them.\n#### {i + 2}"} for i, q in enumerate(questions)]
        (folder / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder


def test_overlapping_splits_raise_data_error_naming_the_path(shared_data, tmp_path):
    train = [f"Ann has {i} pens and buys {i + 2} more pens at the shop. How many pens does she have?" for i in range(4)]
    test = ["Tim reads 5 pages a day for 6 days. How many pages does he read?", "  " + train[2].upper() + " "]
    folder = _write_gsm8k(tmp_path / "clash", train, test)  # one test problem is a train problem, recased
    overrides = {"name": "gsm8k", "data_path": str(folder), "num_seeds": 2, "num_validation": 2, "num_test": 2}
    config = build_config(tiny_config(tmp_path, shared_data, task=overrides, teacher={"engine": "transformers"}))
    with pytest.raises(DataError, match=rf"^{folder}: 1 question\(s\) in both (seeds|validation) and test"):
        load_splits(config)
    clean = _write_gsm8k(tmp_path / "clean", train, test[:1] + ["Bo has 3 cats and 4 dogs. How many pets does Bo have?"])
    config = build_config(tiny_config(tmp_path, shared_data, task={**overrides, "data_path": str(clean)}, teacher={"engine": "transformers"}))
    assert load_splits(config).test.num_rows == 2


def test_real_splits_are_disjoint_on_the_normalised_key(shared_data, tmp_path):
    for name, data in (("game24", shared_data / "game24" / "24.csv"), ("prontoqa", shared_data / "prontoqa")):
        config = build_config(tiny_config(tmp_path, shared_data, task={"name": name, "data_path": str(data), "num_seeds": 200, "num_validation": 64, "num_test": 100}))
        splits = load_splits(config)
        assert splits.test.num_rows == 100


def test_wider_game24_puzzle_is_written_solved_and_verified():
    task = get_task("game24").with_options(max_number=30)
    assert get_task("game24").with_options(max_number=30) is not get_task("game24")
    seed = {"id": "s", "question": question_for([4, 9, 10, 13]), "answer": "", "reference": "4 9 10 13"}
    prompt = task.rewrite_prompt(seed, [])
    assert "four numbers from 1 to 30" in prompt
    rng, wide = random.Random(3), 0
    for _ in range(30):
        question = task.parse_rewrite(task.programmatic_teacher(prompt, rng))
        assert question is not None
        reference = task.reference_for(question, "")
        numbers = [int(n) for n in reference.split()]
        assert all(1 <= n <= 30 for n in numbers)
        wide += max(numbers) > 13
        answer = task.programmatic_teacher(task.answer_prompt(question), rng)
        assert task.verify(answer, reference), (question, answer)
    assert wide > 0
    # the paper's example puzzle 4 * 26 - 10 * 8 = 24
    assert task.verify("Answer: 4 * 26 - 10 * 8 = 24", "4 8 10 26")
    assert task.parse_rewrite("New puzzle: 4 8 10 26") == question_for([4, 8, 10, 26])
    narrow = get_task("game24").with_options(max_number=13)
    assert narrow.parse_rewrite("New puzzle: 4 8 10 26") is None
    with pytest.raises(ValueError, match="max_number"):
        get_task("gsm8k").with_options(max_number=30)


def test_loop_drops_test_puzzles_the_teacher_writes_and_logs_the_count(tmp_path, shared_data, ray_local):
    """The real loop (programmatic teacher, tiny student, 1..13 puzzles): rewrites that are validation
    or test puzzles never reach synthetic.parquet, and MLflow holds how many were dropped."""
    config = build_config(tiny_config(
        tmp_path, shared_data, task={"num_seeds": 16, "num_validation": 60, "num_test": 100, "max_number": 13},
        loop={"iterations": 2, "seeds_per_iteration": 16, "strategy": "random", "fidelity_metrics": False},
    ))
    summary = run(config)
    assert summary.stop_reason == "completed"
    splits = load_splits(config)
    task = get_task("game24")
    evaluation = {task.dedup_key(q) for t in (splits.validation, splits.test) for q in t.column("question").to_pylist()}
    client = MlflowClient(config.tracking.tracking_uri)
    total = 0
    for t, it in enumerate(sorted(Path(summary.run_dir).glob("iter_*"))):
        synthetic = pq.read_table(it / "synthetic.parquet").column("question").to_pylist()
        assert not {task.dedup_key(q) for q in synthetic} & evaluation
        # task.max_number reaches the loop: every kept puzzle uses 1..13 (the default range is 1..40)
        assert synthetic and all(1 <= int(n) <= 13 for q in synthetic for n in task.dedup_key(q).split())
        step = [m.step for m in client.get_metric_history(summary.mlflow_run_id, "iteration") if m.value == t][0]
        metrics = {k: [m.value for m in client.get_metric_history(summary.mlflow_run_id, k) if m.step == step][0]
                   for k in ("synth/decontaminated", "synth/deduplicated", "synth/unparseable_rewrites", "synth/kept", "synth/rejected_answers")}
        # every selected seed's rewrite is accounted for exactly once (no budget limit, r = 1)
        assert metrics["synth/kept"] == len(synthetic)
        assert sum(metrics.values()) == 16
        total += metrics["synth/decontaminated"]
    assert total > 0
