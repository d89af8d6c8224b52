"""GSM8K (Cobbe et al. 2021): grade-school math word problems with a numeric final answer."""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Optional

from loopdistill.schemas import SEEDS, make_table
from tasks.base import DataError, Splits, Task
from tasks.io import read_records, require_fields

_CALC = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"####\s*(.+)\s*$", re.S)
_ANSWER_IS = re.compile(r"the answer is\s*:?\s*\$?\s*(-?[\d,]*\.?\d+)", re.I)
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def normalize_number(text: str) -> Optional[str]:
    """"1,234" -> "1234", "$5" -> "5", "2.50" -> "2.5", "3.0" -> "3"; None when no number."""
    match = _NUMBER.search(text.replace("$", ""))
    if not match:
        return None
    raw = match.group(0).replace(",", "").rstrip(".")
    try:
        value = float(raw)
    except ValueError:
        return None
    return str(int(value)) if value.is_integer() else repr(value)


def clean_solution(answer: str) -> tuple[str, str]:
    """A GSM8K answer field -> (worked solution ending "The answer is N.", normalised N).

    Raises ValueError when the field has no "#### N" line."""
    match = _FINAL.search(answer)
    number = normalize_number(match.group(1)) if match else None
    if number is None:
        raise ValueError("no '#### <number>' final line")
    steps = _CALC.sub("", answer[: match.start()]).strip()
    return f"{steps}\nThe answer is {number}.".strip(), number


class GSM8KTask(Task):
    """Loading, prompts, answer extraction and verifier for GSM8K."""

    name = "gsm8k"

    # --- data -----------------------------------------------------------------------------------
    def load_splits(self, data_path, num_seeds, num_validation, num_test, seed) -> Splits:
        if not data_path:
            raise DataError("task.data_path is required for gsm8k (a folder with train.jsonl/test.jsonl, a file, or a hub id)")
        train, test = self._load(data_path)
        rng = random.Random(seed)
        need = num_seeds + num_validation
        if len(train) < need or len(test) < num_test:
            raise DataError(f"{data_path}: {len(train)} train / {len(test)} test rows, need {need} / {num_test}")
        picked = rng.sample(train, need)
        return Splits(
            seeds=make_table(SEEDS, picked[:num_seeds]),
            validation=make_table(SEEDS, picked[num_seeds:]),
            test=make_table(SEEDS, rng.sample(test, num_test)),
        )

    def _load(self, data_path: str) -> tuple[list[dict], list[dict]]:
        path = Path(data_path)
        if path.is_dir():
            return self._file(path, "train"), self._file(path, "test")
        if path.suffix in (".jsonl", ".json", ".parquet") or path.exists():
            rows = self._rows(path, "all")
            return rows, rows  # one file: callers sample disjoint seeds/validation; test may overlap
        return self._hub(data_path)

    def _file(self, folder: Path, split: str) -> list[dict]:
        for suffix in (".jsonl", ".parquet", ".json"):
            if (folder / f"{split}{suffix}").is_file():
                return self._rows(folder / f"{split}{suffix}", split)
        raise DataError(f"data file not found: {folder / (split + '.jsonl')}")

    def _rows(self, path: Path, split: str) -> list[dict]:
        out = []
        for number, row in enumerate(read_records(path), 1):
            require_fields(path, number, row, ("question", "answer"))
            try:
                solution, reference = clean_solution(row["answer"])
            except ValueError as err:
                raise DataError(f"{path}, row {number}: field 'answer' has {err}") from None
            out.append({"id": f"gsm8k-{split}-{number}", "question": row["question"].strip(), "answer": solution, "reference": reference})
        return out

    def _hub(self, dataset_id: str) -> tuple[list[dict], list[dict]]:
        try:
            from datasets import load_dataset

            ds = load_dataset(dataset_id, "main")
        except Exception as err:  # offline, unknown id, datasets missing: say which path failed
            raise DataError(f"data path {dataset_id!r} is not a file or folder and could not be loaded from the hub: {err}") from None
        return tuple(self._hub_rows(ds[split], dataset_id, split) for split in ("train", "test"))

    def _hub_rows(self, rows, source: str, split: str) -> list[dict]:
        out = []
        for number, row in enumerate(rows, 1):
            require_fields(f"{source}[{split}]", number, row, ("question", "answer"))
            solution, reference = clean_solution(row["answer"])
            out.append({"id": f"gsm8k-{split}-{number}", "question": row["question"], "answer": solution, "reference": reference})
        return out

    # --- prompts --------------------------------------------------------------------------------
    def answer_prompt(self, question: str) -> str:
        return (
            "Solve the math word problem step by step. "
            'Finish with a line "The answer is <number>."\n\n'
            f"Problem: {question}"
        )

    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        """Rewrite-harder prompt after Kessler et al. 2025 (arXiv 2512.00884), App. prompts for GSM8K."""
        examples = "\n".join(f"Example: {row['question']}" for row in few_shot)
        return (
            "You write new grade-school math word problems.\n"
            f"Here are examples of the style:\n{examples}\n\n"
            f"Rewrite this problem into a new, harder one:\n{seed['question']}\n\n"
            "Use new names, objects and quantities, and add 1 to 3 extra arithmetic operations. "
            "The answer must be a single number. Do not solve it. "
            'Reply with exactly one line starting with "New question:".'
        )

    def parse_rewrite(self, text: str) -> Optional[str]:
        match = re.search(r"new question\s*:\s*(.+)", text, re.I | re.S)
        if not match:
            return None
        question = re.split(r"\n\s*\n|\n(?:answer|solution)\s*:", match.group(1).strip(), flags=re.I)[0]
        question = " ".join(question.split())
        if len(question) < 20 or not (("?" in question) or any(c.isdigit() for c in question)):
            return None
        return question

    # --- answers --------------------------------------------------------------------------------
    def extract_answer(self, text: str) -> Optional[str]:
        span = self.answer_span(text)
        return normalize_number(text[span[0] : span[1]]) if span else None

    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        """Character span of the final number: after the last "The answer is", else "####", else the
        last number in the text."""
        matches = list(_ANSWER_IS.finditer(text))
        if matches:
            return matches[-1].span(1)
        final = _FINAL.search(text)
        if final:
            inner = _NUMBER.search(final.group(1))
            if inner:
                return final.start(1) + inner.start(), final.start(1) + inner.end()
        numbers = list(_NUMBER.finditer(text))
        return numbers[-1].span() if numbers else None

    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        return self.extract_answer(answer_text)

    def verify(self, prediction: str, reference: str) -> bool:
        answer = self.extract_answer(prediction)
        if answer is None:
            return False
        try:
            return abs(float(answer) - float(reference)) < 1e-6
        except ValueError:
            return False
