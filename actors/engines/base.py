"""The generation-engine interface every back end implements (transformers, programmatic, ...)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol


@dataclass(frozen=True)
class SamplingParams:
    """How to decode. temperature 0 = greedy; `seed` makes sampling repeatable per call."""

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


class Engine(Protocol):
    """A generation back end living inside one actor.

    Engines that can hand back each answer as it finishes (vLLM, HTTP) also have
    `stream(prompts, params, seeds) -> Iterator[(index, Generation | Exception)]`: every prompt is
    submitted at once and each result is yielded the moment it is done, in completion order; an
    Exception marks a request that failed for good (the others go on). The teacher persists each one
    as it comes, so a crash loses no answer that had arrived.
    """

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None) -> list[Generation]:
        """Complete each user prompt (the engine applies the chat template), in order. seeds: one
        sampling seed per prompt (the teacher's per-request seeds); None = derived from params.seed."""

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt costs as input, chat template included."""
