"""Unit tests of the MATH and ProntoQA tasks: loading real data, errors, extraction, verifiers, prompts,
the ProntoQA generator, solver and programmatic teacher."""
from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from loopdistill.tasks import DataError, get_task
from loopdistill.tasks.hendrycks_math import answers_match, boxed_answer, row_kind
from loopdistill.tasks.io import read_numbered
from loopdistill.tasks.prontoqa import FOLDER_FILES, read_rows
from loopdistill.tasks.prontoqa_generator import generate_problem, generate_problems, solve

MATH = get_task("math")
PRONTOQA = get_task("prontoqa")
GARBAGE = ["", "   ", "no answer here", "\\boxed{", "\\boxed{}", "New question:", "New problem:", "}{" * 50, "True or false:"]


def ids(splits) -> list[list[str]]:
    return [t.column("id").to_pylist() for t in (splits.seeds, splits.validation, splits.test)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MATH_ROW = {"problem": "What is $1+1$?", "solution": "$1+1=\\boxed{2}$.", "level": "Level 1", "type": "Prealgebra"}


# --- MATH: loading --------------------------------------------------------------------------------
def test_math_real_splits_sizes_disjoint_and_from_the_right_files(shared_data):
    splits = MATH.load_splits(str(shared_data / "math"), 30, 10, 20, seed=3)
    seeds, val, test = ids(splits)
    assert (len(seeds), len(val), len(test)) == (30, 10, 20)
    assert len(set(seeds + val + test)) == 60
    assert all(i.startswith("math-train-") for i in seeds + val) and all(i.startswith("math-test-") for i in test)
    assert ids(MATH.load_splits(str(shared_data / "math"), 30, 10, 20, seed=3)) == [seeds, val, test]  # deterministic
    assert ids(MATH.load_splits(str(shared_data / "math"), 30, 10, 20, seed=4)) != [seeds, val, test]
    for row in splits.seeds.to_pylist():
        subject, level = row_kind(row["id"])
        assert subject is not None and level in range(1, 6), row["id"]
        assert row["reference"] == boxed_answer(row["answer"]) and row["reference"]


def test_math_levels_filter(shared_data):
    folder = str(shared_data / "math")
    splits = MATH.load_splits(folder, 100, 20, 50, seed=0, levels=[1, 2])
    assert {row_kind(i)[1] for split in ids(splits) for i in split} == {1, 2}
    unfiltered = MATH.load_splits(folder, 200, 20, 50, seed=0)
    assert {row_kind(i)[1] for i in ids(unfiltered)[0]} >= {3, 4, 5}
    # SOURCE.md: 564 Level-1 train rows; asking for more must fail, not silently mix in other levels
    MATH.load_splits(folder, 560, 4, 10, seed=0, levels=[1])
    with pytest.raises(DataError, match="564 rows, need 565"):
        MATH.load_splits(folder, 560, 5, 10, seed=0, levels=[1])
    with pytest.raises(ValueError, match="1..5"):
        MATH.load_splits(folder, 5, 1, 1, seed=0, levels=[0, 6])


def test_math_config_levels_field_round_trips():
    from loopdistill.config import TaskConfig

    assert TaskConfig(name="math", levels=[1, 2, 3]).levels == [1, 2, 3]
    assert TaskConfig(name="math").levels is None


@pytest.mark.parametrize(
    "row,field",
    [
        ({k: v for k, v in MATH_ROW.items() if k != "solution"}, "solution"),
        ({**MATH_ROW, "problem": "  "}, "problem"),
        ({**MATH_ROW, "level": "Level 9"}, "level"),
        ({**MATH_ROW, "type": 7}, "type"),
        ({**MATH_ROW, "solution": "The answer is 2."}, "solution"),  # no \boxed
    ],
)
def test_math_malformed_row_names_file_row_and_field(tmp_path, row, field):
    write_jsonl(tmp_path / "train.jsonl", [MATH_ROW, row, MATH_ROW])
    write_jsonl(tmp_path / "test.jsonl", [MATH_ROW])
    with pytest.raises(DataError) as err:
        MATH.load_splits(str(tmp_path), 1, 1, 1, seed=0)
    message = str(err.value)
    assert str(tmp_path / "train.jsonl") in message and "row 2" in message and repr(field) in message


def test_math_missing_files_and_empty_box_rows(tmp_path):
    with pytest.raises(DataError, match="not found"):
        MATH.load_splits(str(tmp_path), 1, 1, 1, seed=0)
    empty = {**MATH_ROW, "solution": "so there are $\\boxed{}$ primes"}  # as train/number_theory/7115.json
    path = write_jsonl(tmp_path / "all.jsonl", [MATH_ROW, empty, {**MATH_ROW, "problem": "What is $2+2$?"}, {**MATH_ROW, "problem": "What is 3?"}])
    splits = MATH.load_splits(str(path), 1, 1, 1, seed=0)
    assert all("boxed{}" not in a for t in (splits.seeds, splits.validation, splits.test) for a in t.column("answer").to_pylist())
    with pytest.raises(DataError, match="3 rows, need 4"):
        MATH.load_splits(str(path), 2, 1, 1, seed=0)


# --- MATH: answers --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text,expected",
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\left(3, \\frac{\\pi}{2}\\right)}", "\\left(3, \\frac{\\pi}{2}\\right)"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("$\\boxed 5$", "5"),
        ("\\boxed{\\frac{1}{2}", None),  # never closes
        ("\\boxed{ }", None),
        ("the answer is 5", None),
    ],
)
def test_boxed_answer(text, expected):
    assert boxed_answer(text) == expected


@pytest.mark.parametrize(
    "a,b",
    [
        ("\\dfrac{1}{2}", "\\frac12"), ("\\frac{1}{2}", "0.5"), ("x = 5", "5"), ("\\$1,\\!000", "1000"),
        ("10\\%", "10"), ("\\left( 1, 2 \\right)", "(1,2)"), ("5\\text{ cm}", "5"), ("90^\\circ", "90"),
        ("-\\frac{3}{4}", "-0.75"), ("\\sqrt2", "\\sqrt{2}"), ("3.", "3"), ("\\tfrac{2}{4}", "1/2"),
    ],
)
def test_answers_match_after_normalisation(a, b):
    assert answers_match(a, b) and answers_match(b, a)


@pytest.mark.parametrize("a,b", [("3", "4"), ("(1,2)", "(2,1)"), ("\\frac{1}{2}", "\\frac{1}{3}"), ("x^2", "x^3"), ("1/0", "0")])
def test_answers_that_differ_do_not_match(a, b):
    assert not answers_match(a, b)


def test_math_real_solutions_verify_and_wrong_answers_do_not(shared_data):
    splits = MATH.load_splits(str(shared_data / "math"), 150, 10, 150, seed=5)
    rows = splits.seeds.to_pylist() + splits.test.to_pylist()
    for row in rows:
        assert MATH.verify(row["answer"], row["reference"]), row["id"]
        assert MATH.reference_for(row["question"], row["answer"]) == row["reference"]
        start, end = MATH.answer_span(row["answer"])
        assert row["answer"][start:end].strip() == row["reference"]
        wrong = row["answer"][:start] + row["reference"] + "+1" + row["answer"][end:]
        assert not MATH.verify(wrong, row["reference"]), row["id"]
        assert not MATH.verify(row["question"], row["reference"])  # no box at all
    # another problem's answer rarely matches: only where both answers are equal numbers or strings
    mismatched = sum(MATH.verify(a["answer"], b["reference"]) for a, b in itertools.pairwise(rows))
    assert mismatched < len(rows) // 10


def test_math_prompts_and_parse_rewrite(shared_data):
    splits = MATH.load_splits(str(shared_data / "math"), 6, 1, 1, seed=2, levels=[3])
    seed, *shots = splits.seeds.to_pylist()
    subject, level = row_kind(seed["id"])
    prompt = MATH.rewrite_prompt(seed, shots)
    assert f"Write ONE new {subject} problem of difficulty Level 3" in prompt and level == 3
    assert all(shot["question"] in prompt for shot in shots) and seed["question"] in prompt
    assert prompt.index(shots[-1]["question"]) < prompt.index(seed["question"])
    assert "\\boxed{}" in prompt and "New problem:" in prompt
    unlabelled = MATH.rewrite_prompt({**seed, "id": "synthetic-7"}, [])
    assert "same subject" in unlabelled and "same difficulty" in unlabelled
    assert "\\boxed{}" in MATH.answer_prompt("What is $1+1$?")
    text = "Sure!\nNew problem: Find the sum of all $x$ with $x^2 = 9$.\n\nSolution: $\\boxed{0}$"
    assert MATH.parse_rewrite(text) == "Find the sum of all $x$ with $x^2 = 9$."
    assert MATH.parse_rewrite("New problem: Compute $\\frac{1}{2}+\\frac13$. It is $\\boxed{5/6}$") is None  # solved
    assert MATH.parse_rewrite("New problem: Hi?") is None and MATH.parse_rewrite("Find x if x + 1 = 2.") is None


@pytest.mark.parametrize("task", [MATH, PRONTOQA], ids=["math", "prontoqa"])
def test_unparseable_teacher_output_gives_none_never_raises(task):
    for text in GARBAGE:
        assert task.parse_rewrite(text) is None
        assert task.reference_for(text, text) is None
        assert task.extract_answer(text) is None
        assert task.verify(text, "True") is False


def test_tasks_are_registered():
    assert MATH.name == "math" and PRONTOQA.name == "prontoqa" and PRONTOQA.has_programmatic_teacher


# --- ProntoQA: loading ----------------------------------------------------------------------------
def test_prontoqa_real_splits(shared_data):
    splits = PRONTOQA.load_splits(str(shared_data / "prontoqa"), 40, 20, 30, seed=1)
    seeds, val, test = ids(splits)
    assert (len(seeds), len(val), len(test)) == (40, 20, 30) and len(set(seeds + val + test)) == 90
    for split, names in zip(FOLDER_FILES.values(), (seeds, val, test)):
        assert all(i.startswith(f"prontoqa-{Path(split).stem}-") for i in names)
    for table in (splits.seeds, splits.validation, splits.test):
        for row in table.to_pylist():
            assert "True or false: " in row["question"] and row["reference"] in ("True", "False")
            assert row["answer"].endswith(f"The answer is {row['reference']}.")
            assert PRONTOQA.verify(row["answer"], row["reference"])
    with pytest.raises(DataError, match="need 201"):
        PRONTOQA.load_splits(str(shared_data / "prontoqa"), 10, 201, 10, seed=1)


def test_solver_answers_every_real_question_in_five_hops(shared_data):
    """The forward-chaining reference agrees with the gold label of all 1500 public questions."""
    for name in FOLDER_FILES.values():
        for row in read_rows(shared_data / "prontoqa" / name):
            solution = solve(row["question"])
            assert solution is not None and str(solution.label) == row["reference"], row["id"]
            assert solution.hops == 5


def test_logic_lm_records_keep_label_mapping(shared_data):
    raw = [record for _, record in read_numbered(shared_data / "prontoqa" / "logic_llm_dev.json")]
    rows = read_rows(shared_data / "prontoqa" / "logic_llm_dev.json")
    assert [r["reference"] for r in rows] == [str(r["answer"] == "A") for r in raw]
    assert rows[0]["question"].startswith(raw[0]["context"]) and rows[0]["question"].endswith("True or false: Max is sour.")


COCONUT = {"question": "Every wumpus is sour. Alex is a wumpus. True or false: Alex is sour.", "answer": "True", "steps": ["Alex is a wumpus. Every wumpus is sour.", "Alex is sour."]}
LOGIC = {"id": "p1", "context": "Every wumpus is sour. Alex is a wumpus.", "question": "Is the following statement true or false? Alex is sour.", "options": ["A) True", "B) False"], "answer": "A", "explanation": ["Alex is a wumpus.", "Every wumpus is sour.", "Alex is sour."]}


@pytest.mark.parametrize(
    "good,bad,field",
    [
        (COCONUT, {**COCONUT, "answer": "Maybe"}, "answer"),
        (COCONUT, {k: v for k, v in COCONUT.items() if k != "question"}, "question"),
        (COCONUT, {**COCONUT, "question": "Alex is a wumpus."}, "question"),
        (COCONUT, {**COCONUT, "steps": []}, "steps"),
        (LOGIC, {**LOGIC, "answer": "C"}, "answer"),
        (LOGIC, {**LOGIC, "question": "Is Alex sour?"}, "question"),
        (LOGIC, {**LOGIC, "explanation": "Alex is sour."}, "explanation"),
    ],
)
def test_prontoqa_malformed_record_names_file_row_and_field(tmp_path, good, bad, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps([good, bad]))
    with pytest.raises(DataError) as err:
        PRONTOQA.load_splits(str(path), 1, 1, 1, seed=0)
    message = str(err.value)
    assert str(path) in message and "row 2" in message and repr(field) in message


def test_prontoqa_small_formats_load(tmp_path):
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([COCONUT, LOGIC, {**COCONUT, "answer": "False", "question": COCONUT["question"].replace("Alex is sour.", "Alex is not sour.")}]))
    splits = PRONTOQA.load_splits(str(path), 1, 1, 1, seed=0)
    rows = splits.seeds.to_pylist() + splits.validation.to_pylist() + splits.test.to_pylist()
    assert sorted(r["reference"] for r in rows) == ["False", "True", "True"]
    assert all(solve(r["question"]).label == (r["reference"] == "True") for r in rows)


# --- ProntoQA: generator, solver, teacher -------------------------------------------------------
def test_generated_problems_verify_with_the_requested_hops():
    rng = random.Random(0)
    for hops in range(1, 11):
        for label in (True, False):
            problem = generate_problem(rng, hops, label=label)
            solution = solve(problem.question)
            assert solution is not None and solution.label == label and solution.hops == hops
            assert solution.text() == problem.answer
            assert PRONTOQA.verify(problem.answer, str(label)) and not PRONTOQA.verify(problem.answer, str(not label))
            assert PRONTOQA.reference_for(problem.question, "") == str(label)
    with pytest.raises(ValueError, match="hops"):
        generate_problem(rng, 0)


def test_generate_problems_vary_hops_and_labels_and_avoid_names():
    problems = generate_problems(60, random.Random(1), range(1, 6))
    assert {p.hops for p in problems} == {1, 2, 3, 4, 5}
    assert sum(p.label for p in problems) == 30 and len({p.question for p in problems}) == 60
    taken = {"wumpus", "yumpus", "zumpus"}
    problem = generate_problem(random.Random(2), 9, exclude_names=taken)
    assert not any(name in problem.question.lower() for name in taken)


def test_solver_refuses_what_it_cannot_read():
    assert solve("Every wumpus is sour. Alex is a wumpus. True or false: Alex is sour.").label is True
    assert solve("Wumpuses are not sour. Alex is a wumpus. True or false: Alex is sour.").label is False
    assert solve("No wumpus is sour. Alex is a wumpus. True or false: Alex is sour.") is None  # unknown form
    assert solve("Every wumpus is sour. Alex is a wumpus. Is Alex sour?") is None  # no query
    assert solve("Every wumpus is sour. Max is a wumpus. True or false: Alex is sour.") is None  # nothing about Alex
    contradiction = "Every wumpus is sour. Every wumpus is a yumpus. Yumpuses are not sour. Alex is a wumpus. True or false: Alex is sour."
    assert solve(contradiction) is None
    concept = solve("Every wumpus is a yumpus. Alex is a wumpus. True or false: Alex is a yumpus.")
    assert concept.label is True and concept.hops == 1


def test_generated_splits():
    splits = PRONTOQA.load_splits("generate", 30, 10, 10, seed=0)
    rows = splits.seeds.to_pylist() + splits.validation.to_pylist() + splits.test.to_pylist()
    assert len({r["id"] for r in rows}) == 50 and len({r["question"] for r in rows}) == 50
    assert len({solve(r["question"]).hops for r in rows}) >= 3
    assert all(PRONTOQA.verify(r["answer"], r["reference"]) for r in rows)
    assert ids(PRONTOQA.load_splits("generate", 30, 10, 10, seed=0)) == ids(splits)


def test_prontoqa_extraction():
    assert PRONTOQA.extract_answer("Alex is sour.\nThe answer is True.") == "True"
    assert PRONTOQA.extract_answer("true at first... The answer is: false") == "False"
    assert PRONTOQA.extract_answer("It is FALSE") == "False"
    text = "So the statement is true. The answer is False."
    start, end = PRONTOQA.answer_span(text)
    assert text[start:end] == "False"


def test_prontoqa_rewrite_prompt_and_programmatic_teacher(shared_data):
    seed, *shots = PRONTOQA.load_splits(str(shared_data / "prontoqa"), 6, 1, 1, seed=0).seeds.to_pylist()
    prompt = PRONTOQA.rewrite_prompt(seed, shots)
    assert f"Selected problem (5 hops, answer: {seed['reference']}):\n{seed['question']}\n" in prompt
    assert all(shot["question"] in prompt for shot in shots) and "New question:" in prompt and "hops" in prompt
    rng = random.Random(3)
    hops = set()
    for _ in range(12):
        question = PRONTOQA.parse_rewrite(PRONTOQA.programmatic_teacher(prompt, rng))
        assert question is not None
        solution = solve(question)
        hops.add(solution.hops)
        seen = {w.lower().rstrip(".").removesuffix("es") for w in prompt.split() if w.lower().rstrip(".").endswith(("pus", "puses"))}
        new = {w.lower().rstrip(".").removesuffix("es") for w in question.split() if w.lower().rstrip(".").endswith(("pus", "puses"))}
        assert new and not new & seen  # new creature names
        answer = PRONTOQA.programmatic_teacher(PRONTOQA.answer_prompt(question), rng)
        reference = PRONTOQA.reference_for(question, answer)
        assert reference == str(solution.label) and PRONTOQA.verify(answer, reference)
    assert 5 not in hops and len(hops) >= 3  # a different, varied number of hops


def test_prontoqa_parse_rewrite():
    good = "Every wumpus is sour. Alex is a wumpus. True or false: Alex is sour."
    assert PRONTOQA.parse_rewrite(f"Here it is.\nNew question: {good}\n\nAnswer: True") == good
    assert PRONTOQA.parse_rewrite(f"New question: {good.replace('Alex is a', 'Max is a')}") is None  # unanswerable
    assert PRONTOQA.parse_rewrite(good) is None  # no marker


def _queried_property_rules(question: str) -> int:
    """How many rules of `question` mention the property its statement asks about."""
    statement = question.rsplit("True or false:", 1)[1].strip().rstrip(".")
    queried = statement.split()[-1]
    context = question.rsplit("True or false:", 1)[0]
    sentences = [s.strip().rstrip(".") for s in context.split(". ") if s.strip()]
    return sum(1 for sentence in sentences if sentence.split()[-1] == queried)


def test_without_the_opposite_distractor_the_queried_property_is_in_one_rule():
    for hops in range(1, 6):
        for label in (True, False):
            hard = generate_problem(random.Random(hops), hops, label=label)
            easy = generate_problem(random.Random(hops), hops, label=label, opposite_distractor=False)
            assert _queried_property_rules(hard.question) == 2 and _queried_property_rules(easy.question) == 1
            solution = solve(easy.question)  # the solver's own reading agrees with the label and the proof
            assert solution.label == label and solution.hops == hops and solution.text() == easy.answer


def test_max_hops_and_opposite_distractor_shape_splits_and_rewrites():
    task = PRONTOQA.with_options(max_hops=2, opposite_distractor=False)
    assert PRONTOQA.max_hops is None and PRONTOQA.opposite_distractor  # the registry's task is unchanged
    splits = task.load_splits("generate", 40, 10, 10, seed=0)
    rows = splits.seeds.to_pylist() + splits.validation.to_pylist() + splits.test.to_pylist()
    assert {solve(r["question"]).hops for r in rows} == {1, 2}
    assert all(_queried_property_rules(r["question"]) == 1 for r in rows)
    seed, *shots = splits.seeds.to_pylist()[:4]
    prompt = task.rewrite_prompt(seed, shots)
    assert "(between 1 and 2)" in prompt and "Only one rule may mention the property" in prompt
    rng = random.Random(5)
    for _ in range(10):  # the programmatic teacher reads both settings from the prompt alone
        question = task.parse_rewrite(task.programmatic_teacher(prompt, rng))
        assert solve(question).hops in (1, 2) and solve(question).hops != solve(seed["question"]).hops
        assert _queried_property_rules(question) == 1
    with pytest.raises(ValueError, match="max_hops"):
        PRONTOQA.with_options(max_hops=11)
    with pytest.raises(ValueError, match="max_number"):
        PRONTOQA.with_options(max_number=20)


def test_prontoqa_generator_settings_are_refused_for_other_tasks():
    from loopdistill.config import ConfigError, RunConfig

    with pytest.raises(Exception, match="task.max_hops"):
        RunConfig.model_validate({"task": {"name": "game24", "max_hops": 2}})
    with pytest.raises(Exception, match="task.opposite_distractor"):
        RunConfig.model_validate({"task": {"name": "gsm8k", "opposite_distractor": False}})
    assert ConfigError  # the CLI's one-line error type for these (load_config wraps validation errors)
