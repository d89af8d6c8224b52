"""What an engine can do, as explicit runtime-checkable protocols, and the data it takes and returns.

An engine is one back end (transformers, vLLM, an HTTP endpoint, a task's own code) living inside one
actor. Its roles are protocols, checked with `isinstance` by the actors that need them:
- `GenerationEngine`: generate and count tokens (every engine);
- `StreamingEngine`: also hand back each answer as it finishes (the teacher persists each one at once);
- `JudgeEngine`: score two answers to a question (every teacher engine);
- `AdapterEngine`: serve a LoRA adapter (the student);
- `ForwardEngine`: the torch module and tokenizer for teacher-forced passes (gt_loss, BADGE).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple, Optional, Protocol, runtime_checkable

from loopdistill.judging import judge_prompt


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. temperature 0 = greedy. Teacher requests carry their own seeds (passed beside the
    params); `seed` is the base of `prompt_seeds` when a caller gives none."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    logprobs: bool = False


@dataclass
class Generation:
    """One completion.

    text: the decoded completion (special tokens removed).
    input_tokens / output_tokens: prompt tokens read and completion tokens written (EOS included).
    token_logprobs: log p of each generated token under the model, shape (output_tokens,), natural
        log; empty unless `SamplingParams.logprobs`.
    token_spans: (start, end) character span of each generated token inside `text`, same length as
        token_logprobs (special tokens get an empty span at the end of the text).
    truncated: the completion stopped at max_new_tokens (finish_reason "length"), not on EOS/stop.
    """

    text: str
    input_tokens: int
    output_tokens: int
    token_logprobs: list[float] = field(default_factory=list)
    token_spans: list[tuple[int, int]] = field(default_factory=list)
    truncated: bool = False

    def span_logprob(self, start: int, end: int) -> Optional[float]:
        """Summed log-probability of the tokens overlapping text[start:end], or None if none do."""
        picked = [
            lp for lp, (s, e) in zip(self.token_logprobs, self.token_spans) if s < end and e > start
        ]
        return sum(picked) if picked else None


class AttemptRefused(RuntimeError):
    """The send log refused an attempt before it left: the run's hard budget limits cannot pay for
    its reservation (prompt tokens + max_new_tokens). It was not sent and nothing was billed; an
    engine ends the request with this error (the others go on) and never retries it."""


class JudgeItem(NamedTuple):
    """One pairwise comparison: the question and the two answers, in the order they are shown."""

    question: str
    answer_a: str
    answer_b: str


@runtime_checkable
class GenerationEngine(Protocol):
    """A generation back end living inside one actor (every engine)."""

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None,
                 input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """Complete each user prompt (the engine applies the chat template), in order.

        seeds: one sampling seed per prompt (the teacher's per-request seeds); None = derived from
        params.seed. input_tokens: the prompts' counts already taken with `count_tokens` (one per
        prompt): used for the send log / rate-limit reservation instead of counting again; None =
        the engine counts.
        """

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt costs as input, chat template included."""


@runtime_checkable
class StreamingEngine(GenerationEngine, Protocol):
    """An engine that hands back each answer as it finishes (vLLM, HTTP)."""

    def stream(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None, log=None,
               input_tokens: Optional[list[int]] = None) -> Iterator[tuple[int, "Generation | Exception"]]:
        """Submit every prompt at once and yield (prompt index, result) the moment each is done, in
        completion order; an Exception marks a request that failed for good (the others go on). The
        teacher persists each answer as it comes, so a crash loses no answer that had arrived.

        log: optional send log told of each request (see the engine); input_tokens: as in `generate`.
        """


@runtime_checkable
class JudgeEngine(Protocol):
    """A teacher that can compare two answers to a question (pairwise LLM-as-judge, or a verifier)."""

    def judge(self, items: list[JudgeItem], params: SamplingParams, seeds: Optional[list[int]] = None,
              input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """One verdict per item, in order: text in `loopdistill.judging.parse_verdict`'s format.

        seeds / input_tokens: as in `GenerationEngine.generate`, one per item; input_tokens are the
        counts of `judging.judge_prompt(*item)`.
        """


@runtime_checkable
class AdapterEngine(GenerationEngine, Protocol):
    """An engine that serves a LoRA adapter on shared base weights (the student's engine)."""

    def set_adapter(self, adapter_dir: Optional[str]) -> None:
        """Serve the PEFT LoRA adapter in `adapter_dir` from now on; None = the base model."""


@runtime_checkable
class ForwardEngine(Protocol):
    """An engine that exposes its torch module for teacher-forced forward passes (gt_loss, BADGE).

    tokenizer: the Hugging Face tokenizer of the model; device: where the model's weights live
    ("cpu", "cuda", ...).
    """

    tokenizer: Any
    device: str

    def serving_model(self) -> tuple[Any, Any]:
        """(model, context): the module that serves now (base + current adapter) and the context
        manager to run its forward passes in."""


def judge_prompts(items: list[JudgeItem]) -> list[str]:
    """The judge prompt of each item (`loopdistill.judging.judge_prompt`: the cached, counted text)."""
    return [judge_prompt(*item) for item in items]


def judge_by_prompt(engine: GenerationEngine, items: list[JudgeItem], params: SamplingParams,
                    seeds: Optional[list[int]] = None, input_tokens: Optional[list[int]] = None) -> list[Generation]:
    """`JudgeEngine.judge` of an LLM engine: generate each item's judge prompt. The one place LLM
    engines judge, so the prompt text (the request-cache key, and what is paid for) is the same for all."""
    return engine.generate(judge_prompts(items), params, seeds, input_tokens)


def check_input_tokens(input_tokens: Optional[list[int]], n: int) -> Optional[list[int]]:
    """`input_tokens` as a list of n ints, or None.

    Raises:
        ValueError: a count list of another length than the prompts.
    """
    if input_tokens is None:
        return None
    counts = [int(c) for c in input_tokens]
    if len(counts) != n:
        raise ValueError(f"input_tokens has {len(counts)} counts for {n} prompts")
    return counts
