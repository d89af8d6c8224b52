"""A teacher without an LLM: the task answers prompts with its own code (e.g. Game of 24 by backward
reasoning from a selected puzzle plus a solver's step-by-step solution, as Kessler et al. 2025,
arXiv 2512.00884, do for that task with a verifier).

Tokens are still counted, with the configured tokenizer, so budgets and ledgers read the same as for an
LLM teacher.
"""
from __future__ import annotations

import random

from actors.engines.base import Generation, JudgeItem, SamplingParams, check_input_tokens, judge_prompts
from loopdistill.config import ModelConfig
from loopdistill.judging import verifier_verdict
from loopdistill.models import format_prompt, load_tokenizer
from loopdistill.tasks import get_task


class ProgrammaticEngine:
    """Engine that calls `Task.programmatic_teacher(prompt, rng)`; `judge` asks the task's verifier.

    Args:
        task_name: a task whose `has_programmatic_teacher` is True.
        model: only its tokenizer is used, to count tokens.
    """

    def __init__(self, task_name: str, model: ModelConfig):
        self.task = get_task(task_name)
        if not self.task.has_programmatic_teacher:
            raise ValueError(f"task {task_name!r} has no programmatic teacher")
        self.config = model
        self.tokenizer = load_tokenizer(model.path)

    @classmethod
    def from_config(cls, model: ModelConfig, *, task_name: str, **_unused) -> "ProgrammaticEngine":
        """`build_engine`'s uniform constructor; only the model (tokenizer) and task are used."""
        return cls(task_name, model)

    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return [self._count(format_prompt(self.tokenizer, p, self.config.use_chat_template)) for p in prompts]

    def generate(self, prompts: list[str], params: SamplingParams, seeds: list[int] | None = None,
                 input_tokens: list[int] | None = None) -> list[Generation]:
        """seeds: one per prompt (the teacher's per-request seeds); None: params.seed for all.
        input_tokens: the prompts' counts, one per prompt (None: counted here).

        Raises:
            ValueError: input_tokens of another length than prompts.
        """
        inputs = check_input_tokens(input_tokens, len(prompts)) or self.count_tokens(prompts)
        seeds = list(seeds) if seeds is not None else [params.seed] * len(prompts)
        out = []
        for prompt, n_in, seed in zip(prompts, inputs, seeds):
            # One random stream per (seed, prompt): the answer does not depend on which other prompts
            # share the batch, so a retried or resumed request gets exactly the answer it would have.
            text = self.task.programmatic_teacher(prompt, random.Random(f"{seed}\n{prompt}"))
            out.append(Generation(text=text, input_tokens=n_in, output_tokens=self._count(text)))
        return out

    def judge(self, items: list[JudgeItem], params: SamplingParams, seeds: list[int] | None = None,
              input_tokens: list[int] | None = None) -> list[Generation]:
        """The verifier's verdict on each item (10 for an answer it accepts, 1 otherwise), no LLM.
        Token counts are those of the judge prompt an LLM teacher would read and of the verdict, so
        the ledger reads as for an LLM judge. seeds are accepted for the protocol (the verdict is
        deterministic).

        Raises:
            ValueError: input_tokens of another length than items.
        """
        inputs = check_input_tokens(input_tokens, len(items)) or self.count_tokens(judge_prompts(items))
        out = []
        for item, n_in in zip(items, inputs):
            text = verifier_verdict(self.task, item.question, item.answer_a, item.answer_b)
            out.append(Generation(text=text, input_tokens=n_in, output_tokens=self._count(text)))
        return out
