import random

import pytest

from tasks import DataError, get_task
from tasks.game24 import TOT_TEST_RANGE, question_for
from tasks.game24_solver import ExpressionError, backward_puzzle, evaluate, solve

TASK = get_task("game24")


def test_solver_known_puzzles():
    steps = solve([4, 9, 10, 13])
    assert steps and steps[-1].startswith("Answer:")
    assert TASK.verify("\n".join(steps), "4 9 10 13")
    assert solve([1, 1, 1, 1]) is None
    assert TASK.verify("\n".join(solve([1, 5, 5, 5])), "1 5 5 5")  # needs a fraction: 5 * (5 - 1/5)


@pytest.mark.parametrize(
    "answer,ok",
    [
        ("Answer: (10 - (13 - 9)) * 4 = 24", True),
        ("13 - 9 = 4 (left: 4 4 10)\nAnswer: (10 - (13 - 9)) * 4", True),
        ("Answer: (10 - (13 - 9)) * 5 = 24", False),  # a number not in the puzzle
        ("Answer: 4 * 6 = 24", False),  # numbers missing
        ("Answer: (10 + 13 + 9) - 4 = 24", False),  # 28
        ("Answer: __import__('os').system('true')", False),
        ("Answer: 2 ** 4 + 9 - 1", False),
        ("no answer here", False),
    ],
)
def test_verifier(answer, ok):
    assert TASK.verify(answer, "4 9 10 13") is ok


def test_evaluate_rejects_non_arithmetic():
    with pytest.raises(ExpressionError):
        evaluate("abs(-24)")
    with pytest.raises(ExpressionError):
        evaluate("24 / (3 - 3)")
    value, used = evaluate("8 / (3 - 8 / 3)")
    assert value == 24 and sorted(used) == [3, 3, 8, 8]


def test_programmatic_teacher_writes_new_solvable_puzzles():
    seed = {"id": "s", "question": question_for([1, 1, 4, 6]), "answer": "\n".join(solve([1, 1, 4, 6])), "reference": "1 1 4 6"}
    rng = random.Random(0)
    for _ in range(10):
        text = TASK.programmatic_teacher(TASK.rewrite_prompt(seed, []), rng)
        question = TASK.parse_rewrite(text)
        assert question is not None, text
        reference = TASK.reference_for(question, "")
        assert reference != "1 1 4 6"
        answer = TASK.programmatic_teacher(TASK.answer_prompt(question), rng)
        assert TASK.verify(answer, reference), (question, answer)


def test_backward_puzzle_reuses_anchor_numbers_sometimes():
    rng = random.Random(1)
    puzzles = [backward_puzzle([2, 3, 4, 12], rng) for _ in range(30)]
    assert all(p is not None and solve(p) for p in puzzles)
    assert any(set(p) & {2, 3, 4, 12} for p in puzzles)


def test_parse_rewrite_rejects_bad_puzzles():
    assert TASK.parse_rewrite("New puzzle: 1 1 1 1") is None  # unsolvable
    assert TASK.parse_rewrite("New puzzle: 1 2 3 40") is None  # out of range
    assert TASK.parse_rewrite("Here you go") is None


def test_splits_from_24_csv_are_disjoint_and_test_is_the_tot_range(shared_data):
    splits = TASK.load_splits(str(shared_data / "game24" / "24.csv"), 20, 10, 30, seed=3)
    ids = [t.column("id").to_pylist() for t in (splits.seeds, splits.validation, splits.test)]
    assert [len(i) for i in ids] == [20, 10, 30]
    assert not (set(ids[0]) & set(ids[1])) and not (set(ids[0] + ids[1]) & set(ids[2]))
    assert all(int(i.split("-")[1]) in TOT_TEST_RANGE for i in ids[2])
    for row in splits.seeds.to_pylist():
        assert TASK.verify(row["answer"], row["reference"])


def test_generated_splits(tmp_path):
    splits = TASK.load_splits("generate", 5, 3, 4, seed=0)
    assert splits.seeds.num_rows == 5 and splits.test.num_rows == 4
    again = TASK.load_splits("generate", 5, 3, 4, seed=0)
    assert splits.seeds.equals(again.seeds)


def test_bad_csv_names_row_and_field(tmp_path):
    path = tmp_path / "24.csv"
    path.write_text("Rank,Puzzles\n1,1 1 4 6\n2,1 2 x 4\n")
    with pytest.raises(DataError, match=r"24.csv, row 2: field 'Puzzles'"):
        TASK.load_splits(str(path), 1, 1, 1, 0)
    path.write_text("Rank,Numbers\n1,1 1 4 6\n")
    with pytest.raises(DataError, match="missing column 'Puzzles'"):
        TASK.load_splits(str(path), 1, 1, 1, 0)
    with pytest.raises(DataError, match="not found"):
        TASK.load_splits(str(tmp_path / "absent.csv"), 1, 1, 1, 0)
