"""One requests-per-minute / tokens-per-minute limit for a whole teacher pool: RPM and TPM are a
provider's limits for one API key, so N replicas must share them rather than each take the full rate.

`RateLimiterActor` holds the token buckets and only does arithmetic: `reserve(tokens)` takes one
request and `tokens` from the buckets at once and returns how long the caller must wait before
sending (the buckets may go negative: later callers queue behind earlier promises). The replicas
wait on their own threads, so one slow caller never blocks the actor. `SharedLimits` is the client
side each replica hands to its OpenAIEngine (same methods as openai_engine.LocalLimits).
"""
from __future__ import annotations

import time
from typing import Optional

import ray

from actors.engines.openai_engine import RateLimiter
from actors.group import ActorGroup, ResourceSpec


class RateLimiterActor:
    """Token buckets of one pool (None = unlimited).

    Args:
        requests_per_minute: provider's RPM for the key.
        tokens_per_minute: provider's TPM (prompt + max_new_tokens reserved, refunded on usage).
    """

    def __init__(self, requests_per_minute: Optional[float], tokens_per_minute: Optional[float]):
        self.requests = RateLimiter(requests_per_minute)
        self.tokens = RateLimiter(tokens_per_minute)

    def reserve(self, tokens: int) -> float:
        """Take one request and `tokens`; seconds the caller must wait before sending."""
        return max(self.requests.reserve(1), self.tokens.reserve(tokens))

    def refund(self, tokens: int) -> None:
        """Give back tokens reserved but not used."""
        self.tokens.refund(tokens)

    def waited_s(self) -> float:
        """Seconds of waiting handed out so far (all replicas together)."""
        return self.requests.waited_s + self.tokens.waited_s


class SharedLimits:
    """A replica's view of the pool's RateLimiterActor (thread-safe: each call is one actor call)."""

    def __init__(self, handle):
        self.handle = handle
        self.waited_s = 0.0

    def acquire(self, tokens: int) -> None:
        """Block this thread until the pool's limits allow one request of `tokens`."""
        wait = ray.get(self.handle.reserve.remote(int(tokens)))
        if wait > 0:
            self.waited_s += wait
            time.sleep(wait)

    def refund(self, tokens: int) -> None:
        if tokens > 0:
            self.handle.refund.remote(int(tokens))  # no need to wait for it


# It only does arithmetic, so it reserves no CPU; if its process dies it restarts (its buckets then
# start full again) and the calls it had in flight are retried on the restarted actor.
LIMITER_SPEC = ResourceSpec(role="rate_limiter", num_cpus=0, max_restarts=-1, max_task_retries=-1)


def start_limiter(requests_per_minute: Optional[float], tokens_per_minute: Optional[float],
                  spec: ResourceSpec = LIMITER_SPEC):
    """A RateLimiterActor handle started as an ActorGroup of `spec`, or None when both limits are
    unlimited (RPM / TPM as in RateLimiterActor)."""
    if requests_per_minute is None and tokens_per_minute is None:
        return None
    return ActorGroup(RateLimiterActor, spec, [(requests_per_minute, tokens_per_minute)])[0]
