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
    """

    text: str
    input_tokens: int
    output_tokens: int
    token_logprobs: list[float] = field(default_factory=list)
    token_spans: list[tuple[int, int]] = field(default_factory=list)

    def span_logprob(self, start: int, end: int) -> Optional[float]:
        """Summed log-probability of the tokens overlapping text[start:end], or None if none do."""
        picked = [
            lp for lp, (s, e) in zip(self.token_logprobs, self.token_spans) if s < end and e > start
        ]
        return sum(picked) if picked else None


class Engine(Protocol):
    """A generation back end living inside one actor."""

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """Complete each user prompt (the engine applies the chat template), in order."""

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt costs as input, chat template included."""
