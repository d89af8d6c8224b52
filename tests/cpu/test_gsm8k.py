import pytest

from tasks import DataError, get_task
from tasks.gsm8k import clean_solution, normalize_number

TASK = get_task("gsm8k")


@pytest.mark.parametrize("raw,norm", [("1,234", "1234"), ("$5", "5"), ("-3", "-3"), ("2.50", "2.5"), ("7.0", "7"), ("none", None)])
def test_normalize_number(raw, norm):
    assert normalize_number(raw) == norm


def test_clean_solution_strips_calculator_annotations():
    solution, ref = clean_solution("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72")
    assert solution == "Natalia sold 48/2 = 24 clips.\nThe answer is 72." and ref == "72"


def test_extract_and_verify():
    assert TASK.extract_answer("3 + 4 = 7. The answer is 1,007.") == "1007"
    assert TASK.extract_answer("so #### 12") == "12"
    assert TASK.extract_answer("I got 5 then 9") == "9"
    assert TASK.extract_answer("no numbers") is None
    assert TASK.verify("The answer is $18.00.", "18")
    assert not TASK.verify("The answer is 17.", "18")
    text = "2 + 2 = 4. The answer is 4."
    start, end = TASK.answer_span(text)
    assert text[start:end] == "4" and start == len(text) - 2


def test_parse_rewrite():
    assert TASK.parse_rewrite("New question: Sam buys 3 packs of 12 pens and gives away 5. How many are left?\n\nAnswer: 31") == (
        "Sam buys 3 packs of 12 pens and gives away 5. How many are left?"
    )
    assert TASK.parse_rewrite("Sure! Here is something.") is None
    assert TASK.parse_rewrite("New question: hi") is None


def test_load_real_gsm8k(shared_data):
    splits = TASK.load_splits(str(shared_data / "gsm8k"), 10, 5, 7, seed=0)
    assert (splits.seeds.num_rows, splits.validation.num_rows, splits.test.num_rows) == (10, 5, 7)
    assert not set(splits.seeds.column("id").to_pylist()) & set(splits.validation.column("id").to_pylist())
    for row in splits.seeds.to_pylist():
        assert TASK.verify(row["answer"], row["reference"]) and "<<" not in row["answer"]


def test_bad_rows_name_file_row_and_field(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "answer": "#### 1"}\n{"question": "q2?"}\n')
    (tmp_path / "test.jsonl").write_text('{"question": "q?", "answer": "#### 1"}\n')
    with pytest.raises(DataError, match=r"train.jsonl, row 2: field 'answer' is missing"):
        TASK.load_splits(str(tmp_path), 1, 1, 1, 0)
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DataError, match=r"train.jsonl, line 2: not valid JSON"):
        TASK.load_splits(str(tmp_path), 1, 1, 1, 0)
    (tmp_path / "train.jsonl").write_text('{"question": "q?", "answer": "no final line"}\n')
    with pytest.raises(DataError, match=r"row 1: field 'answer'"):
        TASK.load_splits(str(tmp_path), 1, 1, 1, 0)
    with pytest.raises(DataError, match="not found"):
        TASK.load_splits(str(tmp_path / "nowhere" / "train.jsonl"), 1, 1, 1, 0)
