"""Teacher generation through an OpenAI-compatible HTTP endpoint (OpenAI, vLLM's server, ...).

`max_concurrency` requests are kept in flight (a worker takes the next prompt as soon as its request
returns: no waves), under requests-per-minute and tokens-per-minute limits (per engine, or shared by a
whole pool through a limiter it is given), and are retried with exponential backoff plus jitter on 429,
5xx, timeouts and connection errors (Retry-After is honoured, in seconds or as an HTTP date). `stream`
hands back each answer the moment it arrives. Token counts come from the response's `usage`, else from
the local tokenizer of `model.path`; `finish_reason == "length"` marks the answer truncated.

The API key is read from the environment variable named by `api_key_env` at request time; it is kept
in no attribute, config, log or error message.
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable, Iterator, Optional
from urllib.parse import urlsplit, urlunsplit

import httpx

from actors.engines.base import AttemptRefused, Generation, JudgeItem, SamplingParams, check_input_tokens, judge_by_prompt
from loopdistill.config import ConfigError, ModelConfig, OpenAIConfig
from loopdistill.models import format_prompt, load_tokenizer
from loopdistill.secrets import redact
from loopdistill.seeds import prompt_seeds

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


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Retry-After header as seconds to wait: delta-seconds ("3") or an HTTP date ("Wed, 21 Oct 2026
    07:28:00 GMT", RFC 9110 Sec. 10.2.3), counted from `now` (epoch seconds; default the clock).
    None if absent or unparseable; a date in the past is 0."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def redact_url(url: str) -> str:
    """`url` without credentials (user:password@ removed from the authority), for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


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

    def reserve(self, amount: float) -> float:
        """Take `amount` now without blocking and return the seconds the caller must wait before
        using it (0 when the bucket held it): the same schedule as `acquire`, for a limiter that
        serves other processes (actors/rate_limiter.py)."""
        if self.capacity is None:
            return 0.0
        with self._lock:
            self._refill()
            need = min(amount, self.capacity)
            # A negative level is a queue of reservations already promised: wait for it to drain too.
            wait = max(0.0, (need - self.level) * 60.0 / self.capacity)
            self.level -= amount
            self.waited_s += wait
            return wait


class LocalLimits:
    """Requests-per-minute and tokens-per-minute buckets of one engine (None = unlimited). A pool of
    replicas passes a shared limiter with the same three methods instead, so N replicas together keep
    to the provider's limits for one key."""

    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float]):
        self.requests = RateLimiter(requests_per_minute)
        self.tokens = RateLimiter(tokens_per_minute)

    def acquire(self, tokens: int) -> None:
        """Block until one request of `tokens` (prompt + max_new_tokens) may be sent."""
        self.requests.acquire(1)
        self.tokens.acquire(tokens)

    def refund(self, tokens: int) -> None:
        """Give back tokens reserved but not used (settled on the answer's usage)."""
        self.tokens.refund(tokens)

    @property
    def waited_s(self) -> float:
        return self.requests.waited_s + self.tokens.waited_s


@dataclass
class _Reply:
    text: str
    input_tokens: Optional[int]
    output_tokens: Optional[int]
    truncated: bool = False


def parse_reply(body: dict, endpoint: str) -> _Reply:
    """Text and `usage` token counts (None when the server omitted them) of a chat or completions
    response body.

    Raises:
        ValueError: the body is not a JSON object, or has no choices.
    """
    if not isinstance(body, dict):  # e.g. a JSON list from a proxy: a named error, not an AttributeError
        raise ValueError(f"response is not a JSON object: {str(body)[:300]}")
    choices = body.get("choices") or []
    if not choices:
        raise ValueError(f"response has no choices: {str(body)[:300]}")
    first = choices[0]
    text = (first.get("message") or {}).get("content") if endpoint == "chat" else first.get("text")
    usage = body.get("usage") or {}
    truncated = first.get("finish_reason") == "length"
    return _Reply(text or "", usage.get("prompt_tokens"), usage.get("completion_tokens"), truncated)


class TeacherUnreachable(ConfigError):
    """The pre-flight check found the teacher endpoint unusable: unreachable, 401/403, or the model
    unknown there. One line naming the base URL (without credentials); the CLI exits with code 2."""


def preflight(config: OpenAIConfig, transport: Optional[httpx.BaseTransport] = None) -> None:
    """One free request before any actor starts: GET {base_url}/models with the key. Checks that the
    server answers, accepts the key, and lists `config.model` (when it serves a model list at all: a
    404 there is taken as "no list", and the first real request decides).

    Raises:
        TeacherUnreachable: connection/timeout error, HTTP 401/403, a model list without the model,
            or another 4xx/5xx.
    """
    base = config.base_url.rstrip("/")
    shown = redact_url(base)
    key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        with httpx.Client(timeout=min(config.timeout_s, 30.0), transport=transport) as client:
            resp = client.get(base + "/models", headers=headers)
    except httpx.HTTPError as err:
        raise TeacherUnreachable(f"teacher.openai.base_url {shown} is unreachable: {type(err).__name__}") from None
    if resp.status_code in (401, 403):
        env = config.api_key_env or "(no key variable)"
        raise TeacherUnreachable(f"teacher.openai.base_url {shown} refused the API key from ${env}: HTTP {resp.status_code}")
    if resp.status_code == 404:
        return
    if resp.status_code != 200:
        raise TeacherUnreachable(f"teacher.openai.base_url {shown}: GET /models answered HTTP {resp.status_code}")
    try:
        served = [m.get("id") for m in resp.json().get("data", [])]
    except (ValueError, AttributeError):
        return  # not an OpenAI model list; the first request decides
    if served and config.model not in served:
        raise TeacherUnreachable(
            f"teacher.openai.model {config.model!r} is not served at {shown} (it serves {served[:10]})"
        )


# --- the engine ------------------------------------------------------------------------------------
class OpenAIEngine:
    """Engine over an OpenAI-compatible `/chat/completions` or `/completions` endpoint (teacher only:
    no logprobs, no adapters).

    Args:
        model: `path` names the tokenizer used for count_tokens (budget reservations), for the
            prompt format of the completions endpoint, and for token counts the server omits.
        config: endpoint, limits and retry policy.
        transport: an httpx transport (tests); None = the network.
        limits: RPM/TPM limiter with acquire(tokens) / refund(tokens) / waited_s, shared by a pool's
            replicas; None = this engine's own LocalLimits from the config.

    Counters (plain ints/floats, for metrics): retries, rate_limit_wait_s.
    """

    def __init__(self, model: ModelConfig, config: OpenAIConfig, transport: Optional[httpx.BaseTransport] = None,
                 limits=None):
        self.config = model
        self.api = config
        self.tokenizer = load_tokenizer(model.path)
        self.url = config.base_url.rstrip("/") + ("/chat/completions" if config.endpoint == "chat" else "/completions")
        self.shown_url = redact_url(self.url)  # what messages name: never user:password@
        http_limits = httpx.Limits(max_connections=config.max_concurrency, max_keepalive_connections=config.max_concurrency)
        self.client = httpx.Client(timeout=config.timeout_s, limits=http_limits, transport=transport)
        self.limits = limits if limits is not None else LocalLimits(config.requests_per_minute, config.tokens_per_minute)
        self.retries = 0
        self._rng = random.Random(0)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, model: ModelConfig, *, openai: OpenAIConfig | None = None, limits=None,
                    **_unused) -> "OpenAIEngine":
        """`build_engine`'s uniform constructor; openai None = the default OpenAIConfig (the server
        batches: batch_size, device and enable_lora are not used)."""
        return cls(model, openai or OpenAIConfig(), limits=limits)

    @property
    def rate_limit_wait_s(self) -> float:
        """Seconds spent waiting on the client-side rate limits."""
        return float(self.limits.waited_s)

    # --- token accounting ----------------------------------------------------------------------
    def _count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Input tokens per prompt under the local tokenizer's chat template (the server's may differ
        slightly; the real count comes back in `usage`)."""
        return [self._count(format_prompt(self.tokenizer, p, self.config.use_chat_template)) for p in prompts]

    # --- requests ------------------------------------------------------------------------------
    def _key(self) -> str:
        return os.environ.get(self.api.api_key_env, "") if self.api.api_key_env else ""

    def _headers(self) -> dict:
        key = self._key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, text: str) -> str:
        """`text` (a server's error body, a transport error) without the API key or URL credentials:
        a proxy or a debug server may echo the request back, and these messages reach the run's log."""
        key = self._key()
        text = redact(text)
        return text.replace(key, "***") if key else text

    def _body(self, prompt: str, params: SamplingParams, seed: int) -> dict:
        body = {"model": self.api.model, self.api.max_tokens_field: params.max_new_tokens,
                "temperature": params.temperature, "top_p": params.top_p if params.temperature > 0 else 1.0,
                "seed": seed}
        if self.api.endpoint == "chat":
            body["messages"] = [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = format_prompt(self.tokenizer, prompt, self.config.use_chat_template)
        return body

    def generate(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None,
                 input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """All prompts, `max_concurrency` in flight; results in prompt order. input_tokens: as in `stream`.

        Raises:
            ValueError: logprobs were asked for (this engine serves the teacher only), or
                input_tokens of another length than prompts.
            OpenAIRequestError: a request failed for good (the first such error is raised, after
                every other request finished).
            AttemptRefused: the send log refused a request's attempt for budget (raised the same way).
        """
        out: list[Optional[Generation]] = [None] * len(prompts)
        errors = []
        for index, result in self.stream(prompts, params, seeds, input_tokens=input_tokens):
            if isinstance(result, Exception):
                errors.append((index, result))
            else:
                out[index] = result
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return out  # type: ignore[return-value]

    def stream(self, prompts: list[str], params: SamplingParams, seeds: Optional[list[int]] = None,
               log=None, input_tokens: Optional[list[int]] = None) -> Iterator[tuple[int, "Generation | OpenAIRequestError | AttemptRefused"]]:
        """Yield (prompt index, Generation) as each answer arrives, or (index, OpenAIRequestError) for
        a request that failed for good, or (index, AttemptRefused) for one whose attempt (first or a
        retry) the send log refused for budget; the others go on. seeds: one per prompt (None: from
        params.seed). log: optional send log (actors.teacher) told of every attempt: `sent(index,
        estimated_input_tokens)` right before the attempt leaves (returns a token, or raises
        AttemptRefused: that attempt is not sent and the request ends there), then `answered(token,
        input_tokens, output_tokens)`, `refused(token)` for a 4xx status (nothing generated), or
        `failed(token)` for an attempt that may have been billed without a usable answer (timeout,
        connection error, 5xx, unusable body). input_tokens: the prompts' counts (one per prompt),
        used for the TPM reservation and the send log, and as the input count when the server's
        `usage` omits it; None = counted here with `count_tokens`.

        Raises:
            ValueError: logprobs were asked for (this engine serves the teacher only), or
                input_tokens of another length than prompts.
        """
        if params.logprobs:
            raise ValueError("engine 'openai' returns no logprobs; use 'vllm' or 'transformers' for the student")
        given = check_input_tokens(input_tokens, len(prompts))
        if not prompts:
            return
        estimates = given if given is not None else self.count_tokens(prompts)
        seeds = list(seeds) if seeds is not None else prompt_seeds(prompts, params.seed)
        n = len(prompts)
        workers = min(self.api.max_concurrency, n)
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai")
        try:
            futures = {pool.submit(self._one, i, prompts[i], estimates[i], seeds[i], n, params, log): i for i in range(n)}
            for future in as_completed(futures):
                try:
                    yield futures[future], future.result()
                except (OpenAIRequestError, AttemptRefused) as err:
                    yield futures[future], err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def judge(self, items: list[JudgeItem], params: SamplingParams, seeds: Optional[list[int]] = None,
              input_tokens: Optional[list[int]] = None) -> list[Generation]:
        """Generate each item's `judging.judge_prompt` (see `actors.engines.base.judge_by_prompt`).

        Raises:
            OpenAIRequestError: as `generate`.
        """
        return judge_by_prompt(self, items, params, seeds, input_tokens)

    def _one(self, index: int, prompt: str, estimate: int, seed: int, n: int, params: SamplingParams, log=None) -> Generation:
        reserved = estimate + params.max_new_tokens
        self.limits.acquire(reserved)
        try:
            reply = self._post_with_retries(self._body(prompt, params, seed), f"request {index + 1} of {n}", index, log, estimate)
        except (AttemptRefused, OpenAIRequestError):
            # No answer used the tokens taken from the (possibly shared) TPM bucket: give them back,
            # or the other replicas would wait for tokens nobody spends.
            self.limits.refund(reserved)
            raise
        n_in = reply.input_tokens if reply.input_tokens is not None else estimate
        n_out = reply.output_tokens if reply.output_tokens is not None else self._count(reply.text)
        self.limits.refund(reserved - n_in - n_out)
        return Generation(text=reply.text, input_tokens=int(n_in), output_tokens=int(n_out), truncated=reply.truncated)

    def _post_with_retries(self, body: dict, what: str, index: int = 0, log=None, estimate: int = 0) -> _Reply:
        """POST `body`, retrying transient failures. `what` names the request in errors; `log` (see
        `stream`) hears of each attempt, and admits it or raises AttemptRefused before it leaves: every
        retry passes the budget gate as a first attempt does (the attempt before it may have been
        billed), so a retry the limits cannot pay for is not sent.

        Raises:
            OpenAIRequestError: a non-retryable status, an unusable body, or retries exhausted.
            AttemptRefused: the send log refused an attempt (nothing more is sent for this request).
        """
        last = ""
        for attempt in range(self.api.max_retries + 1):
            retry_after = None
            if attempt:
                # A retry is one more request against the provider's RPM (its tokens stay reserved
                # from the first attempt), so it waits for the limiter like any other.
                self.limits.acquire(0)
            token = log.sent(index, estimate) if log is not None else None
            try:
                resp = self.client.post(self.url, json=body, headers=self._headers())
            except (httpx.TimeoutException, httpx.TransportError) as err:
                # The server may have answered (and billed) a request we gave up on: it stays charged.
                if log is not None:
                    log.failed(token)
                last = self._scrub(f"{type(err).__name__}: {err}")
            else:
                if resp.status_code == 200:
                    try:
                        reply = parse_reply(resp.json(), self.api.endpoint)
                    except ValueError as err:  # not JSON, or no choices: a proxy's page, a wrong endpoint
                        if log is not None:
                            log.failed(token)
                        raise OpenAIRequestError(self._scrub(f"{what} to {self.shown_url}: unusable HTTP 200 body: {err}")) from None
                    if log is not None:  # None counts: the log keeps that part of the reservation
                        log.answered(token, reply.input_tokens, reply.output_tokens)
                    return reply
                if log is not None and resp.status_code < 500:
                    log.refused(token)  # a 4xx (429 included) generated nothing
                elif log is not None:
                    log.failed(token)  # a 5xx may have: it stays charged
                last = self._scrub(f"HTTP {resp.status_code}: {resp.text[:300]}")
                if not is_retryable_status(resp.status_code):
                    raise OpenAIRequestError(f"{what} to {self.shown_url} failed (not retried): {last}")
                retry_after = parse_retry_after(resp.headers.get("retry-after"))
            if attempt < self.api.max_retries:
                self._sleep_before_retry(attempt, retry_after)
        raise OpenAIRequestError(
            f"{what} to {self.shown_url} failed after {self.api.max_retries + 1} attempts; last error: {last}"
        )

    def _sleep_before_retry(self, attempt: int, retry_after: Optional[float]) -> None:
        with self._lock:
            self.retries += 1
            wait = backoff_delay(attempt, self.api.backoff_s, self.api.max_backoff_s, self._rng, retry_after)
        time.sleep(wait)

    def close(self) -> None:
        self.client.close()
