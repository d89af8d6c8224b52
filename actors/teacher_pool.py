"""TeacherPool: N TeacherActor replicas behind one call, sharing one request cache, one spend
journal and (HTTP teachers) one rate limit."""
from __future__ import annotations

import os

import pyarrow as pa
import ray

from actors.group import ActorGroup, ResourceSpec
from actors.rate_limiter import LIMITER_SPEC, start_limiter
from actors.request_cache import RequestCache, SpendJournal, journal_totals
from actors.teacher import TeacherActor
from loopdistill.config import BudgetConfig, TeacherConfig
from loopdistill.schemas import TEACHER_RESPONSES, make_table


def shares_rate_limit(config: TeacherConfig) -> bool:
    """True when the pool starts one RateLimiterActor for all replicas: an HTTP ('openai') teacher with
    an RPM or TPM limit."""
    oc = config.openai
    return config.engine == "openai" and (oc.requests_per_minute is not None or oc.tokens_per_minute is not None)


class TeacherPool:
    """N TeacherActor replicas (one ActorGroup); a request batch is split into N contiguous shards, one
    per replica. An HTTP pool shares one RateLimiterActor, so RPM/TPM are the provider's limits for
    the key, not N times them.

    Args:
        config: teacher config (engine, sampling, HTTP limits) passed to each replica.
        task_name: passed to each replica.
        spec: the replicas' resources and restarts (spec.replicas actors; drivers/actor_group.py
            `teacher_spec`). Restarting a replica and retrying its call is safe: generate and judge
            are idempotent (answers already paid for come from the request cache).
        cache_path: the replicas' shared paid-once request cache (SQLite file), or None.
        journal_path: the replicas' shared SpendJournal (what was sent), or None. A local file:
            its budget gate locks it with flock, so all replicas must run on one node.
        budget: the run's hard limits; every replica's journal admits each attempt (first send,
            retry, re-send after a restart) only if they can still pay for it (None: no gate).
        limiter_spec: resources of the shared RateLimiterActor (started only when
            `shares_rate_limit(config)`).
    """

    def __init__(self, config: TeacherConfig, task_name: str, spec: ResourceSpec, cache_path: str | None = None,
                 journal_path: str | None = None, limiter_spec: ResourceSpec = LIMITER_SPEC,
                 budget: BudgetConfig | None = None):
        self.config = config
        self.journal_path = journal_path
        if journal_path and cache_path and not os.path.exists(journal_path) and os.path.exists(cache_path):
            # A run directory from before spend journals: what its cache holds was paid; carry it over.
            paid = RequestCache(cache_path).stats()
            if paid["requests"]:
                journal = SpendJournal(journal_path)
                journal.carry_over(paid)
                journal.close()
        self.limiter = None
        if shares_rate_limit(config):
            self.limiter = start_limiter(config.openai.requests_per_minute, config.openai.tokens_per_minute, limiter_spec)
        try:
            args = (config, task_name, cache_path, journal_path, self.limiter, budget)
            self.group = ActorGroup(TeacherActor, spec, [args] * spec.replicas)
        except BaseException:
            if self.limiter is not None:
                ray.kill(self.limiter)
            raise

    @property
    def replicas(self) -> list:
        """The replicas' actor handles (empty once shut down)."""
        return self.group.actors

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Tokens of each prompt (the teacher's tokenizer; replica 0)."""
        return self.group.call_one("count_tokens", prompts)

    def generate(self, sends: pa.Table, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> pa.Table:
        """Answer TEACHER_SENDS (n rows, each with its own seed and input tokens) on all replicas in
        parallel; returns TEACHER_RESPONSES (n rows, in order). The seeds travel with the requests, so
        the samples do not depend on the number of replicas. max_new_tokens / temperature override
        the config's for this call (TeacherActor.generate)."""
        return self._sharded(sends, lambda replica, shard: replica.generate.remote(shard, max_new_tokens, temperature))

    def judge(self, sends: pa.Table, max_new_tokens: int) -> pa.Table:
        """Greedy verdicts of JUDGE_SENDS (n rows) on all replicas in parallel; returns
        TEACHER_RESPONSES (n rows, in order; TeacherActor.judge). max_new_tokens: the reply's limit."""
        return self._sharded(sends, lambda replica, shard: replica.judge.remote(shard, max_new_tokens))

    def _sharded(self, sends: pa.Table, call) -> pa.Table:
        """Split `sends` into one contiguous shard per replica, `call(replica, shard)` (an ObjectRef of
        TEACHER_RESPONSES) on each, and concatenate the answers in order."""
        n = len(self.replicas)
        size = -(-sends.num_rows // n) if sends.num_rows else 0
        refs = [
            call(replica, sends.slice(i * size, size))
            for i, replica in enumerate(self.replicas)
            if i * size < sends.num_rows
        ]
        tables = ray.get(refs)
        return pa.concat_tables(tables) if tables else make_table(TEACHER_RESPONSES, [])

    def busy_seconds(self) -> float:
        """Summed busy seconds of all replicas."""
        return sum(self.group.call_all("busy_seconds"))

    def stats(self) -> dict[str, float]:
        """The replicas' counters (TeacherActor.stats), summed."""
        out: dict[str, float] = {}
        for one in self.group.call_all("stats"):
            for k, v in one.items():
                out[k] = out.get(k, 0) + v
        return out

    def paid(self) -> dict[str, int]:
        """What was sent, from the spend journal: requests and their tokens (settled ones at their
        usage, those never settled at their full reservation). Without a journal: what the
        paid-once cache holds."""
        if self.journal_path:
            return journal_totals(self.journal_path)
        return self.group.call_one("paid")

    def shutdown(self) -> None:
        """Kill the replicas and the shared limiter (idempotent)."""
        self.group.shutdown()
        if self.limiter is not None:
            ray.kill(self.limiter)
            self.limiter = None
