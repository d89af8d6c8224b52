"""Unit tests of the GSM8K and Game of 24 tasks: cleaning, extraction, verifiers, prompts, splits, errors."""
from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path

import pytest

from drivers.loop import configured_task
from loopdistill.config import ConfigError, build_config
from loopdistill.tasks import DataError, get_task
from loopdistill.tasks.game24 import DEFAULT_MAX_NUMBER, TOT_TEST_RANGE, puzzle_text, question_for
from loopdistill.tasks.game24_solver import backward_puzzle, evaluate, is_solvable, solve
from loopdistill.tasks.gsm8k import clean_solution, normalize_number

GSM8K = get_task("gsm8k")
GAME24 = get_task("game24")


def data_dir(name: str) -> Path:
    """<repo>/../shared/data/<name> ($LOOPDISTILL_DATA overrides the data root); skips when absent."""
    root = Path(os.environ.get("LOOPDISTILL_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
    if not (root / name).is_dir():
        pytest.skip(f"benchmark data not found at {root / name}")
    return root / name


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"}


# --- GSM8K ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw,expected",
    [("1,234", "1234"), ("$5", "5"), ("-3", "-3"), ("2.50", "2.5"), ("12.0", "12"), ("$1,000,000.00", "1000000"), ("x", None)],
)
def test_normalize_number(raw, expected):
    assert normalize_number(raw) == expected


def test_clean_solution_drops_annotations_and_rewrites_final_line():
    raw = "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nShe earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 1,010"
    answer, reference = clean_solution(raw)
    assert "<<" not in answer and "####" not in answer
    assert answer.endswith("She earned 0.2 x 50 = $10.\nThe answer is 1010.")
    assert reference == "1010"
    with pytest.raises(ValueError):
        clean_solution("no final marker")


@pytest.mark.parametrize(
    "text,expected",
    [
        ("5 + 5 = 10. The answer is 1,234.", "1234"),
        ("The answer is $5.", "5"),
        ("It drops 3 degrees. The answer is -3.", "-3"),
        ("Each costs 2.50. The answer is 2.50", "2.5"),
        ("The answer is 4. Wait, the answer is 6.", "6"),  # the last "The answer is"
        ("THE ANSWER IS: 42", "42"),
        ("work 3 * 4 = 12\n#### 12", "12"),
        ("I get 5 and then 9 apples", "9"),
        ("The answer is 10-3 = 7", "10"),  # first number after the marker, not a hyphen-negative
        ("no number here", None),
    ],
)
def test_extract_answer(text, expected):
    assert GSM8K.extract_answer(text) == expected


def test_answer_span_points_at_final_number():
    text = "The answer is 3 at first. 1 + 2 = 3. The answer is 3."
    start, end = GSM8K.answer_span(text)
    assert (start, end) == (len(text) - 2, len(text) - 1) and text[start:end] == "3"
    assert GSM8K.answer_span("nothing") is None


def test_verify_numeric_equality():
    assert GSM8K.verify("so 18.00 in total. The answer is $18.", "18")
    assert GSM8K.verify("The answer is 1,234.", "1234")
    assert GSM8K.verify("The answer is 0.5", "0.50")
    assert not GSM8K.verify("The answer is 17.", "18")
    assert not GSM8K.verify("I do not know", "18")
    assert not GSM8K.verify("The answer is 18.", "eighteen")
    assert GSM8K.reference_for("q", "so The answer is 2,000.") == "2000"


def test_parse_rewrite():
    text = "Sure.\nNew question: Mia buys 4 boxes of 12 pens and gives 7 away.\nHow many pens are left?\n\nAnswer: 41"
    assert GSM8K.parse_rewrite(text) == "Mia buys 4 boxes of 12 pens and gives 7 away. How many pens are left?"
    inline = "New question: Ann reads 15 pages a day for 6 days. How many pages? Answer: 90"
    assert GSM8K.parse_rewrite(inline) == "Ann reads 15 pages a day for 6 days. How many pages?"
    assert GSM8K.parse_rewrite("Here is a harder problem about pens.") is None
    assert GSM8K.parse_rewrite("New question: Too short?") is None  # < 20 characters
    assert GSM8K.parse_rewrite("New question: a long question without any digit or mark") is None


def test_prompts_carry_the_format():
    assert "The answer is <number>." in GSM8K.answer_prompt("What is 2 + 2?")
    seed = {"id": "s", "question": "SELECTED QUESTION 7?", "answer": "", "reference": "7"}
    shots = [{"id": f"f{i}", "question": f"FEW SHOT {i}?", "answer": "", "reference": "1"} for i in range(3)]
    prompt = GSM8K.rewrite_prompt(seed, shots)
    assert all(f"FEW SHOT {i}?" in prompt for i in range(3)) and "SELECTED QUESTION 7?" in prompt
    assert prompt.index("FEW SHOT 2?") < prompt.index("SELECTED QUESTION 7?")
    assert "New question:" in prompt and "harder" in prompt


def test_load_real_gsm8k_splits():
    folder = data_dir("gsm8k")
    splits = GSM8K.load_splits(str(folder), 8, 4, 5, seed=1)
    assert (splits.seeds.num_rows, splits.validation.num_rows, splits.test.num_rows) == (8, 4, 5)
    seeds, val, test = (t.column("id").to_pylist() for t in (splits.seeds, splits.validation, splits.test))
    assert not set(seeds) & set(val)
    assert all(i.startswith("gsm8k-train-") for i in seeds + val) and all(i.startswith("gsm8k-test-") for i in test)
    lines = (folder / "train.jsonl").read_text().splitlines()
    for row in splits.seeds.to_pylist():
        original = json.loads(lines[int(row["id"].rsplit("-", 1)[1])])  # id = 0-based index in the file
        assert original["question"].strip() == row["question"]
        assert row["answer"].endswith(f"The answer is {row['reference']}.") and "<<" not in row["answer"]
        assert GSM8K.verify(row["answer"], row["reference"])
    again = GSM8K.load_splits(str(folder), 8, 4, 5, seed=1)
    assert again.seeds.equals(splits.seeds) and again.test.equals(splits.test)


def test_single_file_splits_are_disjoint(tmp_path):
    rows = [{"question": f"Q{i}: what is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(12)]
    splits = GSM8K.load_splits(str(write_jsonl(tmp_path / "all.jsonl", rows)), 4, 3, 5, seed=0)
    ids = [set(t.column("id").to_pylist()) for t in (splits.seeds, splits.validation, splits.test)]
    assert [len(i) for i in ids] == [4, 3, 5] and len(ids[0] | ids[1] | ids[2]) == 12


def test_parquet_folder(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for split in ("train", "test"):
        pq.write_table(pa.Table.from_pylist([GOOD] * 3), tmp_path / f"{split}.parquet")
    splits = GSM8K.load_splits(str(tmp_path), 2, 1, 2, seed=0)
    assert splits.test.column("reference").to_pylist() == ["7", "7"]


def test_gsm8k_bad_inputs_name_file_row_and_field(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", [GOOD])
    with pytest.raises(DataError, match=r"data file not found: .*train\.jsonl"):
        GSM8K.load_splits(str(tmp_path), 1, 0, 1, 0)
    with pytest.raises(DataError, match="absent.jsonl"):
        GSM8K.load_splits(str(tmp_path / "absent.jsonl"), 1, 0, 1, 0)
    write_jsonl(tmp_path / "train.jsonl", [GOOD, "", {"question": "Where is the answer?"}])
    with pytest.raises(DataError, match=r"train\.jsonl, row 3: field 'answer' is missing"):
        GSM8K.load_splits(str(tmp_path), 1, 0, 1, 0)
    write_jsonl(tmp_path / "train.jsonl", [GOOD, {"question": 5, "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"train\.jsonl, row 2: field 'question'"):
        GSM8K.load_splits(str(tmp_path), 1, 0, 1, 0)
    write_jsonl(tmp_path / "train.jsonl", [GOOD, '{"question": "broken'])
    with pytest.raises(DataError, match=r"train\.jsonl, line 2: not valid JSON"):
        GSM8K.load_splits(str(tmp_path), 1, 0, 1, 0)
    write_jsonl(tmp_path / "train.jsonl", [GOOD, GOOD])
    with pytest.raises(DataError, match="need 3"):
        GSM8K.load_splits(str(tmp_path), 2, 1, 1, 0)


# --- Game of 24 -----------------------------------------------------------------------------------
def test_solver_on_known_puzzles():
    steps = solve([1, 1, 4, 6])
    assert steps is not None and len(steps) == 4
    assert all(" (left: " in s for s in steps[:3]) and steps[-1].startswith("Answer:") and steps[-1].endswith("= 24")
    assert GAME24.verify("\n".join(steps), "1 1 4 6")
    assert solve([1, 1, 1, 1]) is None and not is_solvable([1, 1, 1, 1])
    assert is_solvable([3, 3, 8, 8])  # only with a fraction: 8 / (3 - 8 / 3)
    assert solve([4, 9, 10, 13]) == solve([4, 9, 10, 13])  # deterministic


@pytest.mark.parametrize(
    "prediction,ok",
    [
        ("13 - 9 = 4 (left: 4 4 10)\n10 - 4 = 6 (left: 4 6)\n4 * 6 = 24 (left: 24)\nAnswer: (10 - (13 - 9)) * 4 = 24", True),
        ("Answer: (10 - (13 - 9)) * 4", True),
        ("Answer: 4 * 6 = 24\nAnswer: (10 - (13 - 9)) * 4 = 24.", True),  # the last Answer counts
        ("Answer: (10 - (13 - 9)) * 4 = 24\nAnswer: 4 * 6 = 24", False),
        ("Answer: (10 - (13 - 8)) * 4 = 24", False),  # wrong number (and 20)
        ("Answer: (10 - (13 - 9)) * 4 * 1 = 24", False),  # extra number
        ("Answer: (13 - (13 - 9)) * 4 = 24", False),  # 13 reused, 10 unused (and 36)
        ("Answer: 4 + 9 + 10 + 13 = 24", False),  # 36
        ("Answer: __import__('os')", False),
        ("Answer: (lambda: 24)()", False),
        ("Answer: 24 / (9 - 9) + 4 + 10 + 13", False),
        ("(10 - (13 - 9)) * 4 = 24", False),  # no "Answer:"
    ],
)
def test_game24_verifier(prediction, ok):
    assert GAME24.verify(prediction, "4 9 10 13") is ok


def test_evaluate_is_exact_and_safe():
    assert evaluate("8 / (3 - 8 / 3)")[0] == 24
    for bad in ("__import__('os').system('true')", "2 ** 10", "-4 * -6", "1e3", "24 / 0"):
        with pytest.raises(ValueError):
            evaluate(bad)


def test_game24_extraction_and_reference():
    text = "4 * 6 = 24 (left: 24)\nAnswer: (10 - (13 - 9)) * 4 = 24"
    assert GAME24.extract_answer(text) == "(10 - (13 - 9)) * 4"
    start, end = GAME24.answer_span(text)
    assert text[start:end] == "(10 - (13 - 9)) * 4"
    assert GAME24.extract_answer("no answer") is None
    assert GAME24.reference_for("Use the numbers 13 4 10 9 and basic arithmetic operations", "") == "4 9 10 13"
    assert GAME24.reference_for("Make 24 somehow", "") is None


def test_game24_prompts_and_parse_rewrite():
    seed = {"id": "s", "question": question_for([4, 9, 10, 13]), "answer": "\n".join(solve([4, 9, 10, 13])), "reference": "4 9 10 13"}
    shot = {"id": "f", "question": question_for([1, 1, 4, 6]), "answer": "", "reference": "1 1 4 6"}
    prompt = GAME24.rewrite_prompt(seed, [shot])
    assert "\nSelected puzzle: 4 9 10 13\n" in prompt and "1 1 4 6" in prompt and seed["answer"] in prompt
    assert "New puzzle:" in prompt and "24" in prompt
    assert "Answer: <expression> = 24" in GAME24.answer_prompt(seed["question"])
    assert GAME24.parse_rewrite("ok\nNew puzzle: 6 4 1 1") == question_for([1, 1, 4, 6])
    assert GAME24.parse_rewrite("New puzzle: 1 1 1 1") is None  # unsolvable
    assert GAME24.parse_rewrite("New puzzle: 0 2 3 4") is None
    # rewrites may go past the data's 1..13 up to max_number (default DEFAULT_MAX_NUMBER)
    assert f"four numbers from 1 to {DEFAULT_MAX_NUMBER}" in prompt
    assert GAME24.parse_rewrite("New puzzle: 1 2 3 14") == question_for([1, 2, 3, 14])
    assert GAME24.parse_rewrite(f"New puzzle: 1 2 3 {DEFAULT_MAX_NUMBER + 1}") is None
    narrow = GAME24.with_options(max_number=13)
    assert "four numbers from 1 to 13" in narrow.rewrite_prompt(seed, [shot])
    assert narrow.parse_rewrite("New puzzle: 1 2 3 14") is None
    assert GAME24.parse_rewrite("New puzzle: 1 2 3") is None


def test_programmatic_teacher_writes_new_solvable_puzzles():
    selected = [4, 9, 10, 13]
    seed = {"id": "s", "question": question_for(selected), "answer": "\n".join(solve(selected)), "reference": "4 9 10 13"}
    prompt = GAME24.rewrite_prompt(seed, [])
    rng = random.Random(7)
    outputs = [GAME24.programmatic_teacher(prompt, rng) for _ in range(20)]
    replay = random.Random(7)
    assert outputs == [GAME24.programmatic_teacher(prompt, replay) for _ in range(20)]  # deterministic given rng
    reused = 0
    for text in outputs:
        question = GAME24.parse_rewrite(text)
        assert question is not None, text
        reference = GAME24.reference_for(question, "")
        assert reference != "4 9 10 13"
        reused += bool(set(map(int, reference.split())) & set(selected))
        answer = GAME24.programmatic_teacher(GAME24.answer_prompt(question), rng)
        assert GAME24.verify(answer, reference), (question, answer)
    assert reused > 0
    assert GAME24.programmatic_teacher(GAME24.answer_prompt(question_for([1, 1, 1, 1])), rng) == "No solution."


def test_backward_puzzle_never_returns_the_selected_puzzle():
    rng = random.Random(0)
    puzzles = [backward_puzzle([6, 4, 1, 1], rng) for _ in range(100)]  # (1 1 4 6) is a likely outcome
    assert all(p is not None and p != [1, 1, 4, 6] and is_solvable(p) for p in puzzles)
    assert all(len(p) == 4 and all(1 <= n <= 13 for n in p) for p in puzzles)


@pytest.mark.parametrize("fraction", [0.0, 0.35, 0.8, 1.0])
def test_in_range_fraction_is_the_share_of_rewritten_puzzles_in_1_to_13(fraction):
    """The option reaches the teacher through the prompt alone: the registry's task (what the programmatic
    engine holds, without options) writes that share of puzzles with all numbers in 1..13, the rest with
    a number in 14..40; each one parses, is new, and the solver's answer verifies."""
    task = GAME24.with_options(in_range_fraction=fraction)
    assert (task.in_range_fraction, task.max_number, GAME24.in_range_fraction) == (fraction, DEFAULT_MAX_NUMBER, None)
    seed = {"id": "s", "question": question_for([4, 9, 10, 13]), "answer": "\n".join(solve([4, 9, 10, 13])), "reference": "4 9 10 13"}
    prompt = task.rewrite_prompt(seed, [])
    assert f"With probability {fraction!r} keep all four numbers from 1 to 13;" in prompt
    rng, draws, in_range = random.Random(11), 2000, 0
    for _ in range(draws):
        text = GAME24.programmatic_teacher(prompt, rng)
        question = task.parse_rewrite(text)
        assert question is not None, text
        numbers = [int(n) for n in task.reference_for(question, "").split()]
        assert numbers != [4, 9, 10, 13] and all(1 <= n <= DEFAULT_MAX_NUMBER for n in numbers)
        in_range += max(numbers) <= 13
        answer = solve(numbers)
        assert answer is not None and task.verify("\n".join(answer), puzzle_text(numbers)), numbers
    # binomial SE at 2,000 draws is at most 0.011; 0 and 1 are exact
    assert abs(in_range / draws - fraction) <= 0.035, (in_range, draws)


def test_without_in_range_fraction_the_prompt_and_puzzles_are_unchanged():
    """None (the default) keeps the prompt and the backward draws of the code before the option existed:
    the six puzzles below were written by that code from random.Random(5)."""
    seed = {"id": "s", "question": question_for([4, 9, 10, 13]), "answer": "", "reference": "4 9 10 13"}
    assert GAME24.with_options(in_range_fraction=None) is GAME24 and "With probability" not in GAME24.rewrite_prompt(seed, [])
    rng = random.Random(5)
    assert [backward_puzzle([4, 9, 10, 13], rng, max_number=40) for _ in range(6)] == [
        [1, 2, 4, 12], [1, 14, 14, 23], [3, 13, 15, 19], [3, 7, 9, 11], [4, 9, 25, 40], [2, 9, 18, 24]
    ]
    # the default task's teacher (range 1..40) writes puzzles above 13 most of the time
    rng = random.Random(5)
    wide = sum(max(backward_puzzle([4, 9, 10, 13], rng, max_number=40)) > 13 for _ in range(200))
    assert wide > 150


def test_bad_in_range_fraction_fails_naming_the_field():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="in_range_fraction"):
            GAME24.with_options(in_range_fraction=bad)
    with pytest.raises(ValueError, match="in_range_fraction 0.5 < 1 needs max_number above 13"):
        GAME24.with_options(max_number=13, in_range_fraction=0.5)
    assert GAME24.with_options(max_number=13, in_range_fraction=1.0).in_range_fraction == 1.0
    with pytest.raises(ValueError, match="in_range_fraction"):
        get_task("prontoqa").with_options(in_range_fraction=0.5)
    for task, message in (
        ({"name": "game24", "in_range_fraction": 1.5}, "task.in_range_fraction"),
        ({"name": "game24", "in_range_fraction": "many"}, "task.in_range_fraction"),
        ({"name": "prontoqa", "in_range_fraction": 0.5}, "task.in_range_fraction: a number range exists only for task 'game24'"),
        ({"name": "game24", "max_number": 13, "in_range_fraction": 0.5}, "task.in_range_fraction: a value below 1 needs puzzles above 13"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            build_config({"task": task})
    # a valid value reaches the run's task
    task = configured_task(build_config({"task": {"name": "game24", "in_range_fraction": 0.4}}))
    assert (task.in_range_fraction, task.max_number) == (0.4, DEFAULT_MAX_NUMBER)


def test_splits_from_real_24_csv():
    path = data_dir("game24") / "24.csv"
    splits = GAME24.load_splits(str(path), 30, 10, 20, seed=5)
    ids = [t.column("id").to_pylist() for t in (splits.seeds, splits.validation, splits.test)]
    assert [len(i) for i in ids] == [30, 10, 20]
    assert len(set(ids[0]) | set(ids[1]) | set(ids[2])) == 60  # disjoint
    index = {name: [int(i.rsplit("-", 1)[1]) for i in group] for name, group in zip(("seeds", "val", "test"), ids)}
    assert all(i in TOT_TEST_RANGE for i in index["test"])
    assert not any(i in TOT_TEST_RANGE for i in index["seeds"] + index["val"])
    puzzles = [line.split(",")[1] for line in path.read_text().splitlines()[1:]]
    for row, i in zip(splits.seeds.to_pylist(), index["seeds"]):
        assert row["reference"] == " ".join(sorted(puzzles[i].split(), key=int))
        assert row["question"] == question_for([int(n) for n in puzzles[i].split()])
        assert GAME24.verify(row["answer"], row["reference"])
    with pytest.raises(DataError, match="900-999"):
        GAME24.load_splits(str(path), 1, 1, 101, seed=0)


def test_generated_splits_are_deterministic_and_solvable():
    splits = GAME24.load_splits("generate", 6, 3, 4, seed=2)
    assert (splits.seeds.num_rows, splits.validation.num_rows, splits.test.num_rows) == (6, 3, 4)
    refs = [r["reference"] for t in (splits.seeds, splits.validation, splits.test) for r in t.to_pylist()]
    assert len(set(refs)) == 13 and all(is_solvable([int(n) for n in r.split()]) for r in refs)
    assert GAME24.load_splits(None, 6, 3, 4, seed=2).seeds.equals(splits.seeds)


def test_bad_csv_names_file_row_and_field(tmp_path):
    path = tmp_path / "24.csv"
    path.write_text("Rank,Puzzles\n1,1 1 4 6\n2,1 1 11 11\n3,2 x 4 6\n")
    with pytest.raises(DataError, match=r"24\.csv, row 3: field 'Puzzles' is not four integers"):
        GAME24.load_splits(str(path), 1, 1, 1, 0)
    path.write_text("Rank,Puzzles\n1,1 1 4\n")
    with pytest.raises(DataError, match=r"row 1: field 'Puzzles'"):
        GAME24.load_splits(str(tmp_path), 1, 1, 1, 0)  # the folder resolves to its 24.csv
    path.write_text("Rank,Numbers\n1,1 1 4 6\n")
    with pytest.raises(DataError, match="missing column 'Puzzles'"):
        GAME24.load_splits(str(path), 1, 1, 1, 0)
    with pytest.raises(DataError, match="absent.csv"):
        GAME24.load_splits(str(tmp_path / "absent.csv"), 1, 1, 1, 0)
