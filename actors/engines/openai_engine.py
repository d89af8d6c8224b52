"""Teacher generation through an OpenAI-compatible HTTP endpoint (OpenAI, vLLM's server, ...).

Requests run concurrently (up to `max_concurrency` threads), under client-side requests-per-minute and
tokens-per-minute limits, and are retried with exponential backoff plus jitter on 429, 5xx, timeouts and
connection errors (a 429's Retry-After is honoured). Token counts come from the response's `usage`,
else from the local tokenizer of `model.path`.

The API key is read from the environment variable named by `api_key_env` at request time; it is kept
in no attribute, config, log or error message.
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Optional

import httpx

from actors.engines import prompt_seeds
from actors.engines.base import Generation, SamplingParams
from loopdistill.config import ModelConfig, OpenAIConfig
from loopdistill.models import format_prompt, load_tokenizer

RETRY_STATUS = frozenset({408, 409, 429})  # plus every 5xx


class OpenAIRequestError(RuntimeError):
    """A request failed for good: a non-retryable status, or retries exhausted (request, URL, status
    and the server's message are in the text)."""


# --- pure pieces: retry policy and backoff --------------------------------------------------------
def is_retryable_status(status: int) -> bool:
    """429 (rate limited), 408/409 (timeout, conflict) and every 5xx are worth retrying."""
    return status in RETRY_STATUS or status >= 500


def backoff_delay(retry: int, base_s: float, max_s: float, rng: random.Random,
                  retry_after_s: Optional[float] = None) -> float:
    """Seconds to wait before retry number `retry` (0-based): "equal jitter" exponential backoff,
    d = min(max_s, base_s * 2**retry), wait uniform in [d/2, d]; at least the server's Retry-After
    (capped at max_s) when it sent one."""
    d = min(max_s, base_s * (2 ** retry))
    wait = d / 2 + rng.uniform(0, d / 2)
    if retry_after_s is not None:
        wait = max(wait, min(max_s, retry_after_s))
    return wait


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Retry-After header in seconds (only the delta-seconds form), None if absent or unparseable."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


class RateLimiter:
    """Token bucket of `per_minute` units refilled continuously (capacity = one minute's worth).

    `acquire(n)` blocks until the bucket holds min(n, capacity) units, then takes n (the level may go
    negative: one request bigger than a minute's budget waits for a full bucket and delays the next
    ones). `refund(n)` gives back units reserved but not used. None = unlimited. Thread-safe; waiters
    are served one at a time, in arrival order of the lock.
    """

    def __init__(self, per_minute: Optional[float], clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.capacity = per_minute
        self.level = per_minute or 0.0
        self.clock, self.sleep = clock, sleep
        self.last = clock()
        self.waited_s = 0.0
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.last) * self.capacity / 60.0)
        self.last = now

    def acquire(self, amount: float) -> None:
        if self.capacity is None:
            return
        with self._lock:
            need = min(amount, self.capacity)
            self._refill()
            while self.level < need:
                wait = (need - self.level) * 60.0 / self.capacity
                self.sleep(wait)
                self.waited_s += wait
                self._refill()
            self.level -= amount

    def refund(self, amount: float) -> None:
        if self.capacity is None or amount <= 0:
            return
        with self._lock:
            self._refill()
            self.level = min(self.capacity, self.level + amount)


@dataclass
class _Reply:
    text: str
    input_tokens: Optional[int]
    output_tokens: Optional[int]


def parse_reply(body: dict, endpoint: str) -> _Reply:
    """Text and `usage` token counts (None when the server omitted them) of a chat or completions
    response body.

    Raises:
        ValueError: the body has no choices.
    """
    choices = body.get("choices") or []
    if not choices:
        raise ValueError(f"response has no choices: {str(body)[:300]}")
    first = choices[0]
    text = (first.get("message") or {}).get("content") if endpoint == "chat" else first.get("text")
    usage = body.get("usage") or {}
    return _Reply(text or "", usage.get("prompt_tokens"), usage.get("completion_tokens"))


# --- the engine ------------------------------------------------------------------------------------
class OpenAIEngine:
    """Engine over an OpenAI-compatible `/chat/completions` or `/completions` endpoint (teacher only:
    no logprobs, no adapters).

    Args:
        model: `path` names the tokenizer used for count_tokens (budget reservations), for the
            prompt format of the completions endpoint, and for token counts the server omits.
        config: endpoint, limits and retry policy.
        transport: an httpx transport (tests); None = the network.

    Counters (plain ints/floats, for metrics): retries, rate_limit_wait_s.
    """

    def __init__(self, model: ModelConfig, config: OpenAIConfig, transport: Optional[httpx.BaseTransport] = None):
        self.config = model
        self.api = config
        self.tokenizer = load_tokenizer(model.path)
        self.url = config.base_url.rstrip("/") + ("/chat/completions" if config.endpoint == "chat" else "/completions")
        limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
        self.client = httpx.Client(timeout=config.timeout_s, limits=limits, transport=transport)
        self.request_limiter = RateLimiter(config.requests_per_minute)
        self.token_limiter = RateLimiter(config.tokens_per_minute)
        self.retries = 0
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    @property
    def rate_limit_wait_s(self) -> float:
        """Seconds spent waiting on the client-side rate limits."""
        return self.request_limiter.waited_s + self.token_limiter.waited_s

    # --- token accounting ----------------------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Input tokens per prompt under the local tokenizer's chat template (the server's may differ
        slightly; the real count comes back in `usage`)."""
        return [self._count(format_prompt(self.tokenizer, p, self.config.use_chat_template)) for p in prompts]

    # --- requests ------------------------------------------------------------------------------
    def _headers(self) -> dict:
        key = os.environ.get(self.api.api_key_env, "") if self.api.api_key_env else ""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _body(self, prompt: str, params: SamplingParams, seed: int) -> dict:
        body = {"model": self.api.model, "max_tokens": params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p if params.temperature > 0 else 1.0,
                "seed": seed}
        if self.api.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = format_prompt(self.tokenizer, prompt, self.config.use_chat_template)
        return body

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Generation]:
        """All prompts concurrently; results in prompt order.

        Raises:
            ValueError: logprobs were asked for (this engine serves the teacher only).
            OpenAIRequestError: a request failed for good (the first such error is raised).
        """
        if params.logprobs:
            raise ValueError("engine 'openai' returns no logprobs; use 'vllm' or 'transformers' for the student")
        if not prompts:
            return []
        estimates = self.count_tokens(prompts)
        jobs = list(zip(range(len(prompts)), prompts, estimates, prompt_seeds(prompts, params.seed)))
        workers = min(self.api.max_concurrency, len(prompts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai") as pool:
            return list(pool.map(lambda job: self._one(*job, n=len(prompts), params=params), jobs))

    def _one(self, index: int, prompt: str, estimate: int, seed: int, n: int, params: SamplingParams) -> Generation:
        reserved = estimate + params.max_new_tokens
        self.request_limiter.acquire(1)
        self.token_limiter.acquire(reserved)
        reply = self._post_with_retries(self._body(prompt, params, seed), f"request {index + 1} of {n}")
        n_in = reply.input_tokens if reply.input_tokens is not None else estimate
        n_out = reply.output_tokens if reply.output_tokens is not None else self._count(reply.text)
        self.token_limiter.refund(reserved - n_in - n_out)
        return Generation(text=reply.text, input_tokens=int(n_in), output_tokens=int(n_out))

    def _post_with_retries(self, body: dict, what: str) -> _Reply:
        """POST `body`, retrying transient failures. `what` names the request in errors."""
        last = ""
        for attempt in range(self.api.max_retries + 1):
            retry_after = None
            try:
                resp = self.client.post(self.url, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.TransportError) as err:
                last = f"{type(err).__name__}: {err}"
            else:
                if resp.status_code == 200:
                    try:
                        return parse_reply(resp.json(), self.api.endpoint)
                    except ValueError as err:  # not JSON, or no choices: a proxy's page, a wrong endpoint
                        raise OpenAIRequestError(f"{what} to {self.url}: unusable HTTP 200 body: {err}") from None
                last = f"HTTP {resp.status_code}: {resp.text[:300]}"
                if not is_retryable_status(resp.status_code):
                    raise OpenAIRequestError(f"{what} to {self.url} failed (not retried): {last}")
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt < self.api.max_retries:
                self._sleep_before_retry(attempt, retry_after)
        raise OpenAIRequestError(
            f"{what} to {self.url} failed after {self.api.max_retries + 1} attempts; last error: {last}"
        )

    def _sleep_before_retry(self, attempt: int, retry_after: Optional[float]) -> None:
        with self._lock:
            self.retries += 1
            wait = backoff_delay(attempt, self.api.backoff_s, self.api.max_backoff_s, self._rng, retry_after)
        time.sleep(wait)

    def close(self) -> None:
        self.client.close()
