"""What every task provides: loading splits, prompts, answer extraction and a verifier.

A task is a stateless object; actors and the driver look it up by name in `loopdistill.tasks.TASKS`.
"""
from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import pyarrow as pa


class DataError(ValueError):
    """A data file is missing, unreadable or malformed; the message names the file, row and field."""


@dataclass(frozen=True)
class Splits:
    """Tables of schema `loopdistill.schemas.SEEDS`, disjoint by id.

    seeds: the pool D0 the student scores; validation: checkpoint selection and ECE; test: reported
    accuracy. Validation and test always come from the original data, never synthetic.
    """

    seeds: pa.Table
    validation: pa.Table
    test: pa.Table


class Task(ABC):
    """Contract between the loop and a benchmark."""

    name: str = ""
    #: True when `programmatic_teacher` is implemented (e.g. Game of 24 by backward reasoning).
    has_programmatic_teacher: bool = False
    #: False for templated questions (Game of 24), where ROUGE-L measures the template, not the
    #: problem: only exact duplicates of `dedup_key` are dropped then.
    rouge_dedup: bool = True

    def dedup_key(self, question: str) -> str:
        """The task's normalised key: what identifies a problem for exact-duplicate removal and for
        decontamination against validation/test (default: whitespace-collapsed, lower-cased text)."""
        return " ".join(question.split()).lower()

    # Run options: keyword arguments of the task's constructor, kept as attributes of the same names,
    # set per run through `with_options` (config section `task`, fields of the same names).
    OPTIONS: tuple[str, ...] = ()

    def with_options(self, **options) -> "Task":
        """This task with run options applied (e.g. Game of 24's `max_number`); an option given as None
        keeps this task's value, and the registry's instance is never changed.

        Raises:
            ValueError: an option the task does not take (named), or a value its constructor refuses.
        """
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            takes = f"only the options {', '.join(self.OPTIONS)}" if self.OPTIONS else "no options"
            raise ValueError(f"task {self.name!r} takes {takes}, got {unknown}")
        values = {key: getattr(self, key) if options.get(key) is None else options[key] for key in self.OPTIONS}
        if all(values[key] == getattr(self, key) for key in self.OPTIONS):
            return self
        return type(self)(**values)

    @abstractmethod
    def load_splits(
        self, data_path: Optional[str], num_seeds: int, num_validation: int, num_test: int, seed: int
    ) -> Splits:
        """Load (or generate) the benchmark and sample the three splits deterministically from `seed`.

        Raises:
            DataError: missing/unreadable file, a row without a required field (file, row, field named),
                or fewer rows than the requested split sizes.
        """

    @abstractmethod
    def answer_prompt(self, question: str) -> str:
        """The instruction under which the student (and the teacher) answer `question` step by step."""

    @abstractmethod
    def rewrite_prompt(self, seed: dict, few_shot: list[dict]) -> str:
        """The teacher prompt that writes a new question from the selected `seed` (a SEEDS row dict),
        with `few_shot` SEEDS row dicts from D0 as examples (Algorithm 1, step 4)."""

    @abstractmethod
    def parse_rewrite(self, text: str) -> Optional[str]:
        """The new question in a teacher's rewrite output, or None when it cannot be parsed."""

    @abstractmethod
    def extract_answer(self, text: str) -> Optional[str]:
        """The final answer in a worked solution (normalised), or None."""

    def answer_span(self, text: str) -> Optional[tuple[int, int]]:
        """Character span [start, end) of the final answer inside `text` (for the confidence of the
        final-answer tokens), or None. Default: the last occurrence of the extracted answer."""
        answer = self.extract_answer(text)
        if answer is None:
            return None
        start = text.rfind(answer)
        return None if start < 0 else (start, start + len(answer))

    @abstractmethod
    def reference_for(self, question: str, answer_text: str) -> Optional[str]:
        """The verifier reference of a synthetic (question, teacher answer) pair, or None when the
        pair cannot be checked (it is then dropped and counted as unparseable)."""

    def question_reference(self, question: str) -> Optional[str]:
        """The verifier reference of a question from the question alone (e.g. a Game of 24 puzzle), or
        None when only an answer can supply it (GSM8K). Rejection sampling keeps every verified answer
        when there is one, else it takes a majority vote over the answers."""
        return None

    @abstractmethod
    def verify(self, prediction: str, reference: str) -> bool:
        """True when the worked solution `prediction` is correct against `reference`."""

    def programmatic_teacher(self, prompt: str, rng: random.Random) -> str:
        """Answer a prompt built by `rewrite_prompt` or `answer_prompt` without an LLM."""
        raise NotImplementedError(f"task {self.name!r} has no programmatic teacher")
