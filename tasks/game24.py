"""Game of 24 (Yao et al. 2023, Tree of Thoughts): combine four numbers with + - * / to make 24."""
from __future__ import annotations

import csv
import random
import re
from pathlib import Path
from typing import Optional

from loopdistill.schemas import SEEDS, make_table
from tasks.base import DataError, Splits, Task
from tasks.game24_solver import ExpressionError, backward_puzzle, evaluate, is_solvable, solve
from tasks.io import require_file

TOT_TEST_RANGE = range(900, 1000)  # 0-based rows Tree of Thoughts evaluates on
_ANSWER = re.compile(r"Answer:\s*(.+)")
_QUESTION = re.compile(r"Use the numbers ([\d ]+?) and basic arithmetic")
_NEW_PUZZLE = re.compile(r"New puzzle:\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")
_SELECTED = re.compile(r"Selected puzzle:\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)")


def question_for(numbers: list[int]) -> str:
    puzzle = " ".join(str(n) for n in sorted(numbers))
    return (
        f"Use the numbers {puzzle} and basic arithmetic operations (+ - * /) to obtain 24. "
        "Each number must be used exactly once."
    )


def _row(row_id: str, numbers: list[int]) -> Optional[dict]:
    steps = solve(numbers)
    if steps is None:
        return None
    puzzle = " ".join(str(n) for n in sorted(numbers))
    return {"id": row_id, "question": question_for(numbers), "answer": "\n".join(steps), "reference": puzzle}


class Game24Task(Task):
    """Game of 24 with an exact verifier and a programmatic teacher (backward reasoning + solver)."""

    name = "game24"
    has_programmatic_teacher = True
    rouge_dedup = False  # every question is one template; two puzzles differ only in four numbers

    def dedup_key(self, question: str) -> str:
        """The sorted puzzle: "Use the numbers 4 6 1 1 ..." and "... 1 1 4 6 ..." are one problem."""
        return self.reference_for(question, "") or super().dedup_key(question)

    # --- data -----------------------------------------------------------------------------------
    def load_splits(self, data_path, num_seeds, num_validation, num_test, seed) -> Splits:
        rng = random.Random(seed)
        if data_path in (None, "", "generate"):
            puzzles = generate_puzzles(num_seeds + num_validation + num_test, rng)
            rows = [_row(f"game24-gen-{i}", p) for i, p in enumerate(puzzles)]
            test, picked = rows[:num_test], rows[num_test:]
        else:
            puzzles, test, rest = self._from_csv(Path(data_path), num_test, rng)
            picked = _solvable_sample(puzzles, rest, num_seeds + num_validation, rng)
        if len(picked) < num_seeds + num_validation:
            raise DataError(f"{data_path}: {len(picked)} solvable puzzles outside the test split, need {num_seeds + num_validation}")
        return Splits(make_table(SEEDS, picked[:num_seeds]), make_table(SEEDS, picked[num_seeds:]), make_table(SEEDS, test))

    def _from_csv(self, path: Path, num_test: int, rng: random.Random) -> tuple[list[list[int]], list[dict], list[int]]:
        """(all puzzles, the test rows, indices of the other rows)."""
        path = require_file(path / "24.csv" if path.is_dir() else path)
        puzzles = read_puzzles(path)
        if num_test > len(TOT_TEST_RANGE) or len(puzzles) < TOT_TEST_RANGE.stop:
            raise DataError(f"{path}: the test split is rows 900-999 (at most 100 puzzles), asked for {num_test}")
        test_idx = rng.sample(list(TOT_TEST_RANGE), num_test)
        test = [_row(f"game24-{i}", puzzles[i]) for i in test_idx]
        test = [r if r else _unsolved(i, puzzles[i]) for r, i in zip(test, test_idx)]
        return puzzles, test, [i for i in range(len(puzzles)) if i not in TOT_TEST_RANGE]

    # --- prompts --------------------------------------------------------------------------------
    def answer_prompt(self, question: str) -> str:
        return (
            f"{question}\nCombine two numbers per step, written as \"a op b = c (left: remaining numbers)\". "
            'Finish with a line "Answer: <expression> = 24".'
        )

    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        examples = "\n".join(f"Example puzzle: {row['reference']}" for row in few_shot)
        return (
            "You write new Game of 24 puzzles by backward reasoning: start from 24, split it into two numbers "
            "with an operation (e.g. 24 = 4 * 6), split one of those again (6 = 13 - 7), and so on until there "
            "are four numbers from 1 to 13. The new puzzle must be solvable and differ from the selected one.\n"
            f"{examples}\n"
            f"Selected puzzle: {seed['reference']}\nIts solution:\n{seed['answer']}\n"
            'Reply with one line "New puzzle: w x y z".'
        )

    def parse_rewrite(self, text: str) -> Optional[str]:
        match = _NEW_PUZZLE.search(text)
        if not match:
            return None
        numbers = [int(g) for g in match.groups()]
        if not all(1 <= n <= 13 for n in numbers) or not is_solvable(numbers):
            return None
        return question_for(numbers)

    # --- answers --------------------------------------------------------------------------------
    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        matches = list(_ANSWER.finditer(text))
        if not matches:
            return None
        expr = re.sub(r"\s*=\s*24\s*\.?\s*$", "", matches[-1].group(1).strip())
        start = matches[-1].start(1)
        return (start, start + len(expr)) if expr else None

    def extract_answer(self, text: str) -> Optional[str]:
        span = self.answer_span(text)
        return text[span[0] : span[1]] if span else None

    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        match = _QUESTION.search(question)
        if not match:
            return None
        numbers = sorted(int(n) for n in match.group(1).split())
        return " ".join(str(n) for n in numbers) if len(numbers) == 4 else None

    def verify(self, prediction: str, reference: str) -> bool:
        """Correct iff the final expression evaluates to exactly 24 and uses each puzzle number once."""
        expr = self.extract_answer(prediction)
        if expr is None:
            return False
        try:
            value, used = evaluate(expr)
        except (ExpressionError, RecursionError, ValueError):
            return False
        return value == 24 and sorted(used) == sorted(int(n) for n in reference.split())

    def programmatic_teacher(self, prompt: str, rng: random.Random) -> str:
        selected = _SELECTED.search(prompt)
        if selected:
            puzzle = backward_puzzle([int(g) for g in selected.groups()], rng)
            return "No new puzzle." if puzzle is None else "New puzzle: " + " ".join(map(str, puzzle))
        match = _QUESTION.search(prompt)
        if not match:
            return "I cannot find the puzzle."
        steps = solve([int(n) for n in match.group(1).split()])
        return "No solution." if steps is None else "\n".join(steps)


def _solvable_sample(puzzles: list[list[int]], indices: list[int], count: int, rng: random.Random) -> list[dict]:
    """Rows for `count` puzzles drawn at random from `indices`, skipping ones the solver cannot do
    (seeds need a worked answer); solves only as many puzzles as it needs."""
    out = []
    for i in rng.sample(indices, len(indices)):
        row = _row(f"game24-{i}", puzzles[i])
        if row is not None:
            out.append(row)
        if len(out) == count:
            break
    return out


def _unsolved(index: int, numbers: list[int]) -> dict:
    """A test puzzle the solver cannot do still tests the student (its answer can never verify)."""
    puzzle = " ".join(str(n) for n in sorted(numbers))
    return {"id": f"game24-{index}", "question": question_for(numbers), "answer": "", "reference": puzzle}


def read_puzzles(path: Path) -> list[list[int]]:
    """Puzzles of a Tree-of-Thoughts 24.csv (column "Puzzles", four integers per row).

    Raises:
        DataError: no "Puzzles" column, or a row (1-based, header excluded) whose Puzzles field is not
            four integers.
    """
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "Puzzles" not in reader.fieldnames:
            raise DataError(f"{path}: missing column 'Puzzles' (columns: {reader.fieldnames})")
        out = []
        for number, row in enumerate(reader, 1):
            try:
                numbers = [int(x) for x in (row["Puzzles"] or "").split()]
            except ValueError:
                numbers = []
            if len(numbers) != 4:
                raise DataError(f"{path}, row {number}: field 'Puzzles' is not four integers ({row['Puzzles']!r})")
            out.append(numbers)
    return out


def generate_puzzles(count: int, rng: random.Random) -> list[list[int]]:
    """`count` distinct solvable puzzles (sorted 4-tuples of 1..13), drawn uniformly and kept if solvable."""
    seen: set[tuple[int, ...]] = set()
    out: list[list[int]] = []
    while len(out) < count:
        puzzle = tuple(sorted(rng.randint(1, 13) for _ in range(4)))
        if puzzle not in seen and is_solvable(list(puzzle)):
            seen.add(puzzle)
            out.append(list(puzzle))
    return out
