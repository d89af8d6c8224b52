"""ProntoQA (Saparov & He 2023): true/false questions answered by chaining rules of a fictional ontology.

Data: two public 5-hop sets in two formats, read into one:
- Logic-LM `logic_llm_dev.json` (github.com/teacherpeterpan/Logic-LLM, `data/ProntoQA/dev.json`, 500
  questions): `context`, `question` ("Is the following statement true or false? Max is sour."),
  `options` (["A) True", "B) False"]), `answer` ("A"/"B"), `explanation` (proof sentences).
- coconut `prontoqa_{test,valid}.json` (github.com/michaelrizvi/coconut, `data/`, 800 and 200
  questions generated with asaparov/prontoqa): `question` (context + "True or false: <statement>"),
  `answer` ("True"/"False"), `steps` (one hop per item).
Every question becomes "<context> True or false: <statement>." and every answer a chain of thought
ending "The answer is True." / "The answer is False.". Or `data_path: generate`: our own generator
(`loopdistill.tasks.prontoqa_generator`), which also makes the programmatic teacher possible.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Optional

from loopdistill.schemas import SEEDS, make_table
from loopdistill.tasks.base import DataError, Splits, Task
from loopdistill.tasks.io import read_numbered, require_fields, row_error
from loopdistill.tasks.prontoqa_generator import MAX_HOPS, PERSONS, generate_problem, generate_problems, solve, split_query

# With a folder: seeds and validation from the coconut files, test from the Logic-LM set (the 500
# questions later papers report on). The three files share no context (no common 80-character context
# prefix), and a run refuses splits that share a question before it starts.
FOLDER_FILES = {"seeds": "coconut_prontoqa_test.json", "validation": "coconut_prontoqa_valid.json", "test": "logic_llm_dev.json"}
GENERATED_HOPS = range(1, 6)  # `generate`: every split mixes 1- to 5-hop problems
TEACHER_HOPS = range(1, 8)  # the programmatic teacher's new problems: 1 to 7 hops
_STATEMENT = re.compile(r"true or false\s*\?\s*(.+)$", re.I | re.S)
_FINAL = re.compile(r"\b(true|false)\b", re.I)
_EITHER = re.compile(r"\b(?:true\s+or\s+false|false\s+or\s+true)\b", re.I)  # an echoed query, not an answer
_ANSWER_IS = re.compile(r"answer is\W*(true|false)\b", re.I)
_NEW_QUESTION = re.compile(r"new question\s*:", re.I)
_QUESTION_END = re.compile(r"\n\s*\n|\s(?:answer|solution)\s*:", re.I)
_SELECTED = re.compile(r"Selected problem \(([^)\n]*)\):\n([^\n]+)")
_HOP_RANGE = re.compile(r"\(between 1 and (\d+)\)")  # the rewrite prompt's hop bound
# The rewrite prompt's line when opposite_distractor is False (the programmatic teacher reads it there).
ONE_RULE_LINE = "Only one rule may mention the property in the statement.\n"
_HOPS = re.compile(r"(\d+) hops?\b")
_ASKED = re.compile(r"^Question: ([^\n]+)$", re.M)
_CREATURE = re.compile(r"\b([a-z]+pus)(?:es)?\b")


class ProntoQATask(Task):
    """Loading (public sets or our generator), prompts, True/False extraction, a forward-chaining
    reference and a programmatic teacher."""

    name = "prontoqa"
    has_programmatic_teacher = True
    OPTIONS = ("max_hops", "opposite_distractor")

    def __init__(self, max_hops: Optional[int] = None, opposite_distractor: bool = True):
        """max_hops: None (generated splits of 1-5 hops, rewrites of 1-7 hops), or the largest hop count
        of both (1..MAX_HOPS). opposite_distractor: False leaves out of generated splits and rewrites
        the rule that gives the queried property the opposite value on a creature the person is not
        (ProntoQA's hardest distractor). Fewer hops and no such rule make short problems that a small
        student learns within minutes on a CPU.

        Raises:
            ValueError: max_hops outside 1..MAX_HOPS.
        """
        if max_hops is not None and not 1 <= max_hops <= MAX_HOPS:
            raise ValueError(f"prontoqa max_hops must be in 1..{MAX_HOPS}, got {max_hops}")
        self.max_hops = max_hops
        self.opposite_distractor = opposite_distractor
        self.split_hops = GENERATED_HOPS if max_hops is None else range(1, max_hops + 1)
        self.teacher_hops = TEACHER_HOPS if max_hops is None else range(1, max_hops + 1)

    # --- data -----------------------------------------------------------------------------------
    def load_splits(self, data_path, num_seeds, num_validation, num_test, seed) -> Splits:
        """Splits from a folder (files per `FOLDER_FILES`), one .json/.jsonl file (all three splits
        sampled disjointly from it), or `data_path` "generate"/None (generated problems, 1-5 hops or
        1..max_hops, ids "prontoqa-gen-<i>"). File rows get ids "prontoqa-<file stem>-<0-based row>". All sampling from
        `random.Random(seed)`.

        Raises:
            DataError: missing file, a malformed record (file, 1-based row and field named), fewer
                rows than requested.
        """
        rng = random.Random(seed)
        if data_path in (None, "", "generate"):
            problems = generate_problems(num_seeds + num_validation + num_test, rng, self.split_hops, self.opposite_distractor)
            rows = [{"id": f"prontoqa-gen-{i}", "question": p.question, "answer": p.answer, "reference": str(p.label)} for i, p in enumerate(problems)]
            return _carve(rows, num_seeds, num_validation)
        path = Path(str(data_path)).expanduser()
        if not path.is_dir():
            rows = read_rows(path)
            _require_rows(path, len(rows), num_seeds + num_validation + num_test)
            return _carve(rng.sample(rows, num_seeds + num_validation + num_test), num_seeds, num_validation)
        tables = []
        for split, count in zip(FOLDER_FILES, (num_seeds, num_validation, num_test)):
            rows = read_rows(path / FOLDER_FILES[split])
            _require_rows(path / FOLDER_FILES[split], len(rows), count)
            tables.append(make_table(SEEDS, rng.sample(rows, count)))
        return Splits(*tables)

    # --- prompts --------------------------------------------------------------------------------
    def answer_prompt(self, question: str) -> str:
        """The question goes last, on its own "Question:" line (the programmatic teacher reads it there)."""
        return (
            "Decide whether the statement at the end of the question is true or false, using only the rules "
            "and facts it states. Reason step by step: one line per step, naming the fact you have and the "
            'rule you apply. End with "The answer is True." or "The answer is False."\n\n'
            f"Question: {' '.join(question.split())}"
        )

    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        """Problem writing after Kessler et al. 2025 (arXiv 2512.00884, Algorithm 1 step 4, ProntoQA
        prompt): new made-up entities, a varied number of hops, a True/False answer. Each problem is
        labelled with its hop count and answer from the solver, so the teacher sees what to vary."""
        examples = "\n".join(f"Example ({_label(row['question'])}):\n{row['question']}" for row in few_shot)
        return (
            "You write logic puzzles in the style of ProntoQA: a made-up world of fictional creatures with rules "
            'such as "Every wumpus is a yumpus." and "Yumpuses are not sour.", facts about one person, and a '
            "statement about that person that follows from a chain of rules (one rule per hop). Distractor rules "
            "must not lead to the statement.\n"
            f"{'' if self.opposite_distractor else ONE_RULE_LINE}"
            f"{examples}\n\n"
            f"Selected problem ({_label(seed['question'])}):\n{' '.join(seed['question'].split())}\n\n"
            "Write ONE new problem: new made-up creature names (not used above), a different person, and a "
            f"different number of hops (between 1 and {max(self.teacher_hops)}); its answer may be True or False. "
            "Do not solve it.\n"
            'Output the problem on one line after "New question:", ending with "True or false: <statement>."'
        )

    def parse_rewrite(self, text: str) -> Optional[str]:
        """The text after the last "New question:" (to a blank line or "Answer:"), whitespace-collapsed;
        None when absent, without a "True or false:" statement, or when the solver cannot answer it
        from its own rules (then no verifier reference could exist)."""
        markers = list(_NEW_QUESTION.finditer(text))
        if not markers:
            return None
        question = _QUESTION_END.split(text[markers[-1].end() :].strip(), maxsplit=1)[0]
        question = " ".join(question.split()).strip("*\"' ")
        if split_query(question) is None or solve(question) is None:
            return None
        return question

    # --- answers --------------------------------------------------------------------------------
    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        """Span of True/False after the last "answer is", else of the last standalone true/false that
        is not part of an echoed "true or false"."""
        matches = list(_ANSWER_IS.finditer(text))
        if matches:
            return matches[-1].span(1)
        echoed = [m.span() for m in _EITHER.finditer(text)]
        words = [w for w in _FINAL.finditer(text) if not any(a <= w.start() < b for a, b in echoed)]
        return words[-1].span(1) if words else None

    def extract_answer(self, text: str) -> Optional[str]:
        """"True" or "False" (capitalised), or None."""
        span = self.answer_span(text)
        return text[span[0] : span[1]].capitalize() if span else None

    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        """The forward-chaining answer to the question ("True"/"False"), never the teacher's own
        claim; None when the solver cannot answer it."""
        solution = solve(question)
        return None if solution is None else str(solution.label)

    def question_reference(self, question: str) -> Optional[str]:
        """The forward-chaining answer: the question alone fixes the reference (as in Game of 24)."""
        return self.reference_for(question, "")

    def verify(self, prediction: str, reference: str) -> bool:
        """True when the final True/False of `prediction` equals `reference` (case-insensitive)."""
        answer = self.extract_answer(prediction)
        return answer is not None and answer.lower() == reference.strip().lower()

    def programmatic_teacher(self, prompt: str, rng: random.Random) -> str:
        """A rewrite prompt gets "New question: ..." from the generator: creature names absent from the
        prompt, another person, a hop count other than the selected problem's from 1 to the prompt's
        stated bound (TEACHER_HOPS when none is stated), a random answer, and no opposite-value rule when
        the prompt holds ONE_RULE_LINE. An answer prompt gets the solver's chain of thought."""
        selected = _SELECTED.search(prompt)
        if selected:
            seed_hops = _HOPS.match(selected.group(1))  # absent when the seed was "unsolved"
            seed_hops = int(seed_hops.group(1)) if seed_hops else None
            stated = _HOP_RANGE.search(prompt)
            top = min(int(stated.group(1)), MAX_HOPS) if stated else max(TEACHER_HOPS)
            hops = rng.choice([h for h in range(1, top + 1) if h != seed_hops] or [1])
            others = [p for p in PERSONS if p != _person(selected.group(2))]
            problem = generate_problem(rng, hops, exclude_names=_creatures(prompt), person=rng.choice(others),
                                       opposite_distractor=ONE_RULE_LINE not in prompt)
            return f"New question: {problem.question}"
        asked = _ASKED.findall(prompt)
        solution = solve(asked[-1]) if asked else None
        return "I cannot answer this question." if solution is None else solution.text()


def _label(question: str) -> str:
    """"5 hops, answer: True" from the solver, or "unsolved" when it cannot answer the question."""
    solution = solve(question)
    return "unsolved" if solution is None else f"{solution.hops} hops, answer: {solution.label}"


def _creatures(text: str) -> set[str]:
    """Made-up creature names (singular) anywhere in `text`."""
    return {m.group(1) for m in _CREATURE.finditer(text.lower())}


def _person(question: str) -> Optional[str]:
    parts = split_query(question)
    return parts[1].split()[0] if parts else None


def _carve(rows: list[dict], num_seeds: int, num_validation: int) -> Splits:
    """Consecutive slices of already-shuffled rows: seeds, validation, the rest as test."""
    cut = num_seeds + num_validation
    return Splits(make_table(SEEDS, rows[:num_seeds]), make_table(SEEDS, rows[num_seeds:cut]), make_table(SEEDS, rows[cut:]))


def read_rows(path: Path) -> list[dict]:
    """SEEDS rows of one file in either format (by record: `context` present = Logic-LM).

    Raises:
        DataError: missing/unreadable file, or a record with a missing or bad field (file, 1-based row,
            field named: `question`, `context`, `answer`, `steps`/`explanation`).
    """
    return [_record(path, number, row, f"prontoqa-{path.stem}-{index}") for index, (number, row) in enumerate(read_numbered(path))]


def _record(path: Path, number: int, row: dict, row_id: str) -> dict:
    if "context" in row:
        require_fields(path, number, row, ("context", "question", "answer"))
        statement = _STATEMENT.search(row["question"])
        if not statement:
            raise row_error(path, number, "question", f"has no 'true or false? <statement>' ({row['question']!r:.60})")
        label = _option_label(path, number, row)
        question = f"{row['context'].strip()} True or false: {statement.group(1).strip()}"
        proof = _pairs(row.get("explanation"), path, number, "explanation")
    else:
        require_fields(path, number, row, ("question", "answer"))
        if row["answer"].strip() not in ("True", "False"):
            raise row_error(path, number, "answer", f"is not 'True' or 'False' ({row['answer']!r:.40})")
        if split_query(row["question"]) is None:
            raise row_error(path, number, "question", "has no 'True or false: <statement>'")
        label, question = row["answer"].strip() == "True", row["question"].strip()
        proof = _lines(row.get("steps"), path, number, "steps")
    answer = "\n".join(proof + [f"The answer is {label}."])
    return {"id": row_id, "question": question, "answer": answer, "reference": str(label)}


def _option_label(path: Path, number: int, row: dict) -> bool:
    """The Logic-LM answer letter mapped through `options` ("A) True"); A = True, B = False without them."""
    options = row.get("options") or ["A) True", "B) False"]
    table = {}
    for option in options if isinstance(options, list) else []:
        match = re.match(r"\s*([A-Z])\)\s*(True|False)\s*$", str(option))
        if match:
            table[match.group(1)] = match.group(2) == "True"
    letter = row["answer"].strip()
    if letter not in table:
        raise row_error(path, number, "answer", f"is not one of the options {sorted(table)} ({letter!r:.20})")
    return table[letter]


def _lines(steps, path: Path, number: int, field: str) -> list[str]:
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) and s.strip() for s in steps):
        raise row_error(path, number, field, "is not a non-empty list of sentences")
    return [" ".join(s.split()) for s in steps]


def _pairs(sentences, path: Path, number: int, field: str) -> list[str]:
    """Logic-LM proofs alternate fact, rule, fact, ...: one line per (fact, rule) hop, as in coconut."""
    flat = _lines(sentences, path, number, field)
    return [" ".join(flat[i : i + 2]) for i in range(0, len(flat), 2)]


def _require_rows(source, have: int, need: int) -> None:
    if have < need:
        raise DataError(f"{source}: {have} rows, need {need} for the requested split sizes")
