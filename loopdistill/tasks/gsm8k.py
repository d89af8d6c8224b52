"""GSM8K (Cobbe et al. 2021): grade-school math word problems with a numeric final answer.

Data: github.com/openai/grade-school-math `train.jsonl`/`test.jsonl`, one object per line with
`question` and `answer`; `answer` is a worked solution with calculator annotations `<<48/2=24>>`
whose last line is `#### N`.
"""
from __future__ import annotations

import os
import random
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Iterable, Optional

from loopdistill.schemas import SEEDS, make_table
from loopdistill.tasks.base import DataError, Splits, Task
from loopdistill.tasks.io import SUFFIXES, read_numbered, require_fields, row_error

_CALC = re.compile(r"<<[^>]*>>")
# A number: optional sign (not a hyphen inside "3-day" or "10-3"), thousands commas, decimals.
_NUMBER = re.compile(r"(?:(?<![\w)])-)?(?:\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")
_ANSWER_IS = re.compile(r"the answer is", re.I)
_NEW_QUESTION = re.compile(r"new question\s*:", re.I)
_QUESTION_END = re.compile(r"\n\s*\n|\s(?:answer|solution)\s*:", re.I)


def _canonical(raw: str) -> Optional[str]:
    """"1,234" -> "1234", "2.50" -> "2.5", "7.0" -> "7", "-0" -> "0"; None when not a number."""
    try:
        value = Decimal(raw.replace(",", ""))
    except InvalidOperation:
        return None
    return "0" if value == 0 else format(value.normalize(), "f")


def normalize_number(text: str) -> Optional[str]:
    """The first number in `text`, normalised ("$1,234.50" -> "1234.5", "-3" -> "-3"); None when none."""
    match = _NUMBER.search(text.replace("$", ""))
    return _canonical(match.group(0)) if match else None


def clean_solution(answer: str) -> tuple[str, str]:
    """A GSM8K `answer` field -> (training target, reference).

    The target drops the `<<...>>` calculator annotations and replaces the final "#### N" line with
    "The answer is N." (the format `answer_prompt` asks for); the reference is N normalised.
    Raises ValueError when there is no "#### <number>" marker.
    """
    marker = answer.rfind("####")
    number = normalize_number(answer[marker + 4 :]) if marker >= 0 else None
    if number is None:
        raise ValueError("has no '#### <number>' final line")
    steps = _CALC.sub("", answer[:marker]).strip()
    return f"{steps}\nThe answer is {number}.".strip(), number


def _number_after(text: str, markers: Iterable[re.Match]) -> Optional[tuple[int, int]]:
    """Span of the first number on the rest of the line after the last marker followed by one."""
    for marker in reversed(list(markers)):
        end = text.find("\n", marker.end())
        number = _NUMBER.search(text, marker.end(), end if end >= 0 else len(text))
        if number:
            return number.span()
    return None


def _looks_local(data_path: str) -> bool:
    """True for paths that cannot be a hub id ("/abs", "./rel", "../rel", "~/x", or anything existing)."""
    return os.path.isabs(data_path) or data_path.startswith((".", "~")) or Path(data_path).exists()


class GSM8KTask(Task):
    """Loading, prompts, answer extraction and verifier for GSM8K."""

    name = "gsm8k"

    # --- data -----------------------------------------------------------------------------------
    def load_splits(self, data_path, num_seeds, num_validation, num_test, seed) -> Splits:
        """Seeds and validation sampled disjointly from train, test from test (`random.Random(seed)`).

        `data_path`: a folder with train/test .jsonl (or .parquet, .json); one such file (then all
        three splits are sampled disjointly from it); or a Hugging Face dataset id ("openai/gsm8k",
        config "main"; needs `datasets` and network). Row ids are "gsm8k-<split>-<0-based index>".

        Raises:
            DataError: missing file (path named), malformed line or row (file, 1-based row, field),
                fewer rows than requested.
        """
        if not data_path:
            raise DataError("gsm8k needs task.data_path: a folder with train.jsonl/test.jsonl, a file, or a hub id")
        rng = random.Random(seed)
        need = num_seeds + num_validation
        train, test = self._load(str(data_path))
        if test is None:  # one file: carve all three splits out of it
            _require_rows(data_path, len(train), need + num_test)
            picked = rng.sample(train, need + num_test)
            picked, test_rows = picked[:need], picked[need:]
        else:
            _require_rows(f"{data_path} (train)", len(train), need)
            _require_rows(f"{data_path} (test)", len(test), num_test)
            picked, test_rows = rng.sample(train, need), rng.sample(test, num_test)
        return Splits(
            seeds=make_table(SEEDS, picked[:num_seeds]),
            validation=make_table(SEEDS, picked[num_seeds:]),
            test=make_table(SEEDS, test_rows),
        )

    def _load(self, data_path: str) -> tuple[list[dict], Optional[list[dict]]]:
        """(train rows, test rows), test None when `data_path` is a single file."""
        path = Path(data_path).expanduser()
        if path.is_dir():
            return self._file(path, "train"), self._file(path, "test")
        if path.suffix in SUFFIXES or _looks_local(data_path):
            return _clean_rows(read_numbered(path), path, path.stem), None
        return self._hub(data_path)

    def _file(self, folder: Path, split: str) -> list[dict]:
        for suffix in SUFFIXES:
            if (folder / f"{split}{suffix}").is_file():
                path = folder / f"{split}{suffix}"
                return _clean_rows(read_numbered(path), path, split)
        raise DataError(f"data file not found: {folder / (split + '.jsonl')} (nor .json/.parquet)")

    def _hub(self, dataset_id: str) -> tuple[list[dict], list[dict]]:
        try:
            from datasets import load_dataset

            ds = load_dataset(dataset_id, "main")
        except Exception as err:  # offline, unknown id, `datasets` missing: name what was tried
            raise DataError(f"data path {dataset_id!r} is not a local file or folder and could not be loaded from the hub: {err}") from None
        return tuple(
            _clean_rows(enumerate(ds[split], 1), f"{dataset_id}[{split}]", split) for split in ("train", "test")
        )

    # --- prompts --------------------------------------------------------------------------------
    def answer_prompt(self, question: str) -> str:
        return (
            "Solve the math word problem step by step. "
            'End with a line of the form "The answer is <number>."\n\n'
            f"Problem: {question}"
        )

    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        """Rewrite-harder prompt (Kessler et al. 2025, arXiv 2512.00884, Algorithm 1 step 4): the few-shot
        D0 questions show the style, the selected seed is rewritten into one new, harder problem."""
        examples = "\n".join(f"Example {i}: {row['question']}" for i, row in enumerate(few_shot, 1))
        return (
            "You write grade-school math word problems.\n"
            f"Examples of the style:\n{examples}\n\n"
            f"Selected problem:\n{seed['question']}\n\n"
            "Write ONE new problem that is harder than the selected problem: use new names, objects and "
            "quantities, and add 1 to 3 extra arithmetic operations. Its answer must be a single number. "
            "Do not solve it.\n"
            'Output exactly one line starting with "New question:".'
        )

    def parse_rewrite(self, text: str) -> Optional[str]:
        """The text after the last "New question:", up to a blank line or an "Answer:"/"Solution:" part,
        whitespace-collapsed; None when absent, shorter than 20 characters, or with neither "?" nor a digit."""
        markers = list(_NEW_QUESTION.finditer(text))
        if not markers:
            return None
        question = _QUESTION_END.split(text[markers[-1].end() :].strip(), maxsplit=1)[0]
        question = " ".join(question.split()).strip("*\"' ")
        if len(question) < 20 or not ("?" in question or any(c.isdigit() for c in question)):
            return None
        return question

    # --- answers --------------------------------------------------------------------------------
    def extract_answer(self, text: str) -> Optional[str]:
        """The final number, normalised like the reference; None when the text has no number."""
        span = self.answer_span(text)
        return _canonical(text[span[0] : span[1]]) if span else None

    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        """Span of the final number: the first number after the last "The answer is" (same line),
        else after the last "####", else the last number in the text."""
        span = _number_after(text, _ANSWER_IS.finditer(text)) or _number_after(text, re.finditer("####", text))
        if span:
            return span
        numbers = list(_NUMBER.finditer(text))
        return numbers[-1].span() if numbers else None

    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        return self.extract_answer(answer_text)

    def verify(self, prediction: str, reference: str) -> bool:
        """Numeric equality (|a - b| < 1e-6) of the extracted answer and `reference`; False when either
        does not parse."""
        answer = self.extract_answer(prediction)
        try:
            return answer is not None and abs(float(answer) - float(reference.replace(",", ""))) < 1e-6
        except ValueError:
            return False


def _clean_rows(numbered: Iterable[tuple[int, dict]], source, split: str) -> list[dict]:
    """SEEDS rows from (1-based row number, record) pairs. Raises DataError naming source, row, field."""
    out = []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, ("question", "answer"))
        try:
            answer, reference = clean_solution(row["answer"])
        except ValueError as err:
            raise row_error(source, number, "answer", str(err)) from None
        out.append({"id": f"gsm8k-{split}-{index}", "question": row["question"].strip(), "answer": answer, "reference": reference})
    return out


def _require_rows(source, have: int, need: int) -> None:
    if have < need:
        raise DataError(f"{source}: {have} rows, need {need} for the requested split sizes")
