"""MATH (Hendrycks et al. 2021): competition problems in 7 subjects, levels 1-5, answers in \\boxed{...}.

Task name "math" (the module is not called math.py so that it never shadows the standard library).
Data: one object per line with `problem`, `solution` (a worked solution whose final answer is inside
\\boxed{...}), `level` ("Level 1".."Level 5"; two train rows say "Level ?"), `type` (the subject,
e.g. "Counting & Probability") and optionally `unique_id`.

Row ids carry subject and level, "math-<split>-<subject slug>-L<level>-<0-based row index>" (level 0 =
unknown), because a SEEDS row has no other column for them and the rewrite prompt is conditioned on both.
"""
from __future__ import annotations

import logging
import random
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional

from loopdistill.schemas import SEEDS, make_table
from loopdistill.tasks.base import DataError, Splits, Task
from loopdistill.tasks.io import SUFFIXES, read_numbered, require_fields, row_error

log = logging.getLogger(__name__)

LEVELS = range(1, 6)
SUBJECTS = {
    "algebra": "Algebra",
    "counting_and_probability": "Counting & Probability",
    "geometry": "Geometry",
    "intermediate_algebra": "Intermediate Algebra",
    "number_theory": "Number Theory",
    "prealgebra": "Prealgebra",
    "precalculus": "Precalculus",
}
_LEVEL = re.compile(r"^Level ([1-5]|\?)$")
_ID_KIND = re.compile(r"-([a-z0-9_]+)-L(\d)-\d+$")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_NEW_PROBLEM = re.compile(r"new (?:problem|question)\s*:", re.I)
_PROBLEM_END = re.compile(r"\n\s*\**\s*(?:solution|answer)\s*\**\s*:", re.I)
# "\text{ cm}" at the end of an answer is a unit (a leading space inside the braces marks it in MATH).
_TRAILING_UNIT = re.compile(r"^(.+?)\\(?:text|mbox)\{\s[^{}]*\}$")
_TEXT = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_SPACING = re.compile(r"\\[,;:! ]|\\q?quad")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![a-zA-Z])")
_DECIMAL = re.compile(r"^-?(?:\d+(?:\.\d*)?|\.\d+)$")
_THOUSANDS = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_FRAC = re.compile(r"^(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}$")
_SLASH = re.compile(r"^(-?\d+)/(-?\d+)$")


# --- answers ---------------------------------------------------------------------------------------
def boxed_span(text: str) -> Optional[tuple[int, int]]:
    """Character span [start, end) of the content of the last \\boxed{...} (or \\fbox{...}) in `text`,
    braces matched so that \\boxed{\\frac{1}{2}} gives "\\frac{1}{2}"; "\\boxed 5" gives "5".
    None when there is no box, its braces do not close, or it is empty."""
    markers = list(_BOXED.finditer(text))
    if not markers:
        return None
    start = markers[-1].end()
    if start < len(text) and text[start] == "{":
        end = _closing_brace(text, start)
        span = (start + 1, end) if end is not None else None
    else:  # "\boxed 5$": the box holds one token
        token = re.match(r"[^\s$]+", text[start:])
        span = (start, start + token.end()) if token else None
    return span if span and text[span[0] : span[1]].strip() else None


def _closing_brace(text: str, opening: int) -> Optional[int]:
    """Index of the brace closing the one at `opening`, or None when it never closes."""
    depth = 0
    for i in range(opening, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return None


def boxed_answer(text: str) -> Optional[str]:
    """The stripped content of the last \\boxed{...} in `text`, or None (see `boxed_span`)."""
    span = boxed_span(text)
    return text[span[0] : span[1]].strip() if span else None


def normalize_answer(answer: str) -> str:
    """A canonical string for comparing final answers: no spaces, \\left/\\right, \\!, dollar signs,
    percent signs, degree marks, trailing periods, trailing \\text{ unit}s or "x =" prefixes;
    \\dfrac/\\tfrac -> \\frac; \\frac12 -> \\frac{1}{2}; \\sqrt2 -> \\sqrt{2}; ".5" -> "0.5".
    After the normalisation of Hendrycks et al. 2021 (MATH `is_equiv`), reimplemented."""
    s = answer.strip().replace("\n", "")
    s = _LEFT_RIGHT.sub("", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("$", "")
    unit = _TRAILING_UNIT.match(s)
    s = unit.group(1) if unit else s
    s = _TEXT.sub(r"\1", s)
    s = _SPACING.sub("", s).replace(" ", "").rstrip(".")
    parts = s.split("=")
    if len(parts) == 2 and 0 < len(parts[0]) <= 2:  # "x=5", "k=-2": the value, not the variable
        s = parts[1]
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    return re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)


def to_number(normalized: str) -> Optional[Fraction]:
    """The exact value of a normalised answer that is an integer, decimal ("1,000.5" too), "a/b" or
    \\frac{a}{b} (optionally negated); None for anything else (expressions, intervals, text)."""
    s = normalized
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    if _DECIMAL.match(s):
        return Fraction(s)
    frac = _FRAC.match(s) or _SLASH.match(s)
    if not frac:
        return None
    sign, num, den = frac.groups() if len(frac.groups()) == 3 else ("", *frac.groups())
    if int(den) == 0:
        return None
    value = Fraction(int(num), int(den))
    return -value if sign else value


def answers_match(a: str, b: str) -> bool:
    """True when two final answers agree after `normalize_answer`, as strings or as exact numbers."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na == nb:
        return True
    va, vb = to_number(na), to_number(nb)
    return va is not None and va == vb


# --- ids: subject and level ----------------------------------------------------------------------
def subject_slug(subject: str) -> str:
    """"Counting & Probability" -> "counting_and_probability" (the folder name of the MATH release)."""
    return re.sub(r"[^a-z0-9]+", "_", subject.lower().replace("&", "and")).strip("_")


def row_kind(row_id: str) -> tuple[Optional[str], Optional[int]]:
    """(subject name, level 1-5) encoded in a row id by `load_splits`; None for each part it lacks."""
    match = _ID_KIND.search(row_id)
    if not match:
        return None, None
    slug, level = match.group(1), int(match.group(2))
    return SUBJECTS.get(slug, slug.replace("_", " ").title()), (level if level in LEVELS else None)


def _kind_label(row_id: str) -> str:
    """"Number Theory, Level 3" (parts that are unknown are left out)."""
    subject, level = row_kind(row_id)
    return ", ".join(p for p in (subject, f"Level {level}" if level else None) if p) or "type unknown"


class MathTask(Task):
    """Loading, prompts, \\boxed{} answer extraction and a normalised-answer verifier for MATH."""

    name = "math"

    # --- data -----------------------------------------------------------------------------------
    def load_splits(self, data_path, num_seeds, num_validation, num_test, seed, levels=None) -> Splits:
        """Seeds and validation sampled disjointly from train, test from test (`random.Random(seed)`).

        `data_path`: a folder with train/test .jsonl (or .json, .parquet), or one such file (then all
        three splits are sampled disjointly from it). `levels`: the MATH levels to keep (subset of 1..5;
        None keeps all, including rows of unknown level); `config.task.levels`. Rows whose \\boxed{} is
        empty (two train rows of the original release) are skipped with a warning: nothing can verify them.

        Raises:
            DataError: missing file, a malformed row (file, 1-based row and field named: `problem`,
                `solution` without a \\boxed answer, `type`, `level`), fewer rows than requested.
            ValueError: a level outside 1..5.
        """
        if not data_path:
            raise DataError("math needs task.data_path: a folder with train.jsonl/test.jsonl, or one file")
        keep = _level_filter(levels)
        path = Path(str(data_path)).expanduser()
        rng = random.Random(seed)
        need = num_seeds + num_validation
        if path.is_dir():
            train, test = (keep(_read_split(path, split)) for split in ("train", "test"))
            _require_rows(f"{path} (train, levels {levels or 'all'})", len(train), need)
            _require_rows(f"{path} (test, levels {levels or 'all'})", len(test), num_test)
            picked, test_rows = rng.sample(train, need), rng.sample(test, num_test)
        else:
            rows = keep(_clean_rows(read_numbered(path), path, path.stem))
            _require_rows(f"{path} (levels {levels or 'all'})", len(rows), need + num_test)
            picked = rng.sample(rows, need + num_test)
            picked, test_rows = picked[:need], picked[need:]
        return Splits(
            seeds=make_table(SEEDS, picked[:num_seeds]),
            validation=make_table(SEEDS, picked[num_seeds:]),
            test=make_table(SEEDS, test_rows),
        )

    # --- prompts --------------------------------------------------------------------------------
    def answer_prompt(self, question: str) -> str:
        return (
            "Solve the following math problem step by step. "
            "Write the final answer, simplified and exact, inside \\boxed{}.\n\n"
            f"Problem: {question}"
        )

    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        """Problem writing conditioned on the seed's subject and level (Kessler et al. 2025, arXiv
        2512.00884, Algorithm 1 step 4 and its MATH prompt): the few-shot D0 problems, labelled with
        their subject and level, show the style; the teacher writes one new problem of the selected
        problem's subject and level whose answer fits in \\boxed{}."""
        subject, level = row_kind(seed["id"])
        examples = "\n\n".join(
            f"Example {i} ({_kind_label(row['id'])}):\n{row['question']}" for i, row in enumerate(few_shot, 1)
        )
        kind = f"{subject} problem" if subject else "problem of the same subject as the selected one"
        difficulty = f"of difficulty Level {level} (of 1 to 5)" if level else "of about the same difficulty"
        return (
            "You write competition mathematics problems in the style of the MATH dataset "
            "(subjects such as Algebra, Number Theory or Geometry; difficulty Level 1 = easiest to Level 5).\n"
            f"Examples:\n{examples}\n\n"
            f"Selected problem ({_kind_label(seed['id'])}):\n{seed['question']}\n\n"
            f"Write ONE new {kind} {difficulty}. It must differ from the selected problem (new quantities, "
            "objects or setting) and have a single exact final answer that a solution would write in "
            "\\boxed{}. Do not solve it.\n"
            'Output the problem after "New problem:".'
        )

    def parse_rewrite(self, text: str) -> Optional[str]:
        """The text after the last "New problem:" (or "New question:"), up to a "Solution:"/"Answer:"
        line, stripped (inner newlines kept: LaTeX may need them). None when the marker is absent, the
        problem is shorter than 15 characters, or it contains a \\boxed answer (the teacher solved it)."""
        markers = list(_NEW_PROBLEM.finditer(text))
        if not markers:
            return None
        problem = _PROBLEM_END.split(text[markers[-1].end() :], maxsplit=1)[0].strip().strip("*\"'").strip()
        if len(problem) < 15 or _BOXED.search(problem):
            return None
        return problem

    # --- answers --------------------------------------------------------------------------------
    def extract_answer(self, text: str) -> Optional[str]:
        """The normalised content of the last \\boxed{...}, or None (no box, unbalanced braces)."""
        answer = boxed_answer(text)
        return normalize_answer(answer) if answer else None

    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        """Span of the content of the last \\boxed{...} (the raw text, not the normalised answer)."""
        return boxed_span(text)

    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        """The boxed final answer of the teacher's solution (raw, stripped), or None without one."""
        return boxed_answer(answer_text)

    def verify(self, prediction: str, reference: str) -> bool:
        """True when the last boxed answer of `prediction` matches `reference` (`answers_match`);
        False when the prediction has no boxed answer."""
        answer = boxed_answer(prediction)
        return answer is not None and answers_match(answer, reference)


# --- loading ---------------------------------------------------------------------------------------
def _level_filter(levels: Optional[Iterable[int]]):
    """A function keeping rows whose id-encoded level is in `levels` (all rows when None).
    Raises ValueError for a level outside 1..5."""
    if levels is None:
        return lambda rows: rows
    wanted = set(levels)
    bad = sorted(level for level in wanted if level not in LEVELS)
    if bad or not wanted:
        raise ValueError(f"math levels must be a non-empty subset of 1..5, got {sorted(wanted)}")
    return lambda rows: [row for row in rows if row_kind(row["id"])[1] in wanted]


def _read_split(folder: Path, split: str) -> list[dict]:
    for suffix in SUFFIXES:
        path = folder / f"{split}{suffix}"
        if path.is_file():
            return _clean_rows(read_numbered(path), path, split)
    raise DataError(f"data file not found: {folder / (split + '.jsonl')} (nor .json/.parquet)")


def _clean_rows(numbered: Iterable[tuple[int, dict]], source, split: str) -> list[dict]:
    """SEEDS rows from (1-based row number, record) pairs; question = problem, answer = the worked
    solution, reference = its boxed answer. Rows whose box is empty or unclosed cannot be verified
    and are skipped (logged). Raises DataError naming source, row and field."""
    out, empty = [], []
    for index, (number, row) in enumerate(numbered):
        require_fields(source, number, row, ("problem", "solution", "type", "level"))
        level = _LEVEL.match(row["level"].strip())
        if not level:
            raise row_error(source, number, "level", f"is not 'Level 1'..'Level 5' or 'Level ?' ({row['level']!r:.40})")
        if not _BOXED.search(row["solution"]):
            raise row_error(source, number, "solution", "has no \\boxed{...} final answer")
        reference = boxed_answer(row["solution"])
        if reference is None:  # "\boxed{}": two train rows of the original release lost their answer
            empty.append(number)
            continue
        level_number = 0 if level.group(1) == "?" else int(level.group(1))
        out.append(
            {
                "id": f"math-{split}-{subject_slug(row['type'])}-L{level_number}-{index}",
                "question": row["problem"].strip(),
                "answer": row["solution"].strip(),
                "reference": reference,
            }
        )
    if empty:
        log.warning("math: skipped %d rows of %s with an empty or unclosed \\boxed answer (rows %s)", len(empty), source, empty[:10])
    return out


def _require_rows(source, have: int, need: int) -> None:
    if have < need:
        raise DataError(f"{source}: {have} rows, need {need} for the requested split sizes")
