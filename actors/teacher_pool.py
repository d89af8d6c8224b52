"""TeacherPool: N TeacherActor replicas behind one call, sharing one request cache, one spend
journal and (HTTP teachers) one rate limit."""
from __future__ import annotations

import os

import pyarrow as pa
import ray

from actors.request_cache import RequestCache, SpendJournal, journal_totals
from actors.teacher import TeacherActor
from loopdistill.config import TeacherConfig
from loopdistill.schemas import TEACHER_RESPONSES, make_table


class TeacherPool:
    """N TeacherActor replicas; a request batch is split into N contiguous shards, one per replica.
    An HTTP pool shares one RateLimiterActor, so RPM/TPM are the provider's limits for the key, not
    N times them.

    Args:
        config: teacher config; `num_replicas`, `num_cpus`, `num_gpus` size the pool.
        task_name: passed to each replica.
        cache_path: the replicas' shared paid-once request cache (SQLite file), or None.
        journal_path: the replicas' shared SpendJournal (what was sent), or None.
    """

    def __init__(self, config: TeacherConfig, task_name: str, cache_path: str | None = None,
                 journal_path: str | None = None):
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
        if config.engine == "openai":
            from actors.rate_limiter import start_limiter

            self.limiter = start_limiter(config.openai.requests_per_minute, config.openai.tokens_per_minute)
        remote = ray.remote(TeacherActor).options(
            num_cpus=config.num_cpus, num_gpus=config.num_gpus,
            max_restarts=config.max_restarts, max_task_retries=config.max_restarts,  # generate() is idempotent
        )
        self.replicas = [remote.remote(config, task_name, cache_path, journal_path, self.limiter)
                         for _ in range(config.num_replicas)]

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return ray.get(self.replicas[0].count_tokens.remote(prompts))

    def generate(self, requests: pa.Table, seed: int, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> pa.Table:
        """Answer TEACHER_REQUESTS on all replicas in parallel; returns TEACHER_RESPONSES in order.
        Every shard gets the same call seed: each request's own seed comes from its request_id, so
        the samples do not depend on the number of replicas. max_new_tokens / temperature override
        the config's for this call."""
        n = len(self.replicas)
        size = -(-requests.num_rows // n) if requests.num_rows else 0
        refs = [
            replica.generate.remote(requests.slice(i * size, size), seed, max_new_tokens, temperature)
            for i, replica in enumerate(self.replicas)
            if i * size < requests.num_rows
        ]
        tables = ray.get(refs)
        return pa.concat_tables(tables) if tables else make_table(TEACHER_RESPONSES, [])

    def busy_seconds(self) -> float:
        """Summed busy seconds of all replicas."""
        return sum(ray.get([r.busy_seconds.remote() for r in self.replicas]))

    def stats(self) -> dict[str, float]:
        """The replicas' counters (TeacherActor.stats), summed."""
        out: dict[str, float] = {}
        for one in ray.get([r.stats.remote() for r in self.replicas]):
            for k, v in one.items():
                out[k] = out.get(k, 0) + v
        return out

    def paid(self) -> dict[str, int]:
        """What was sent, from the spend journal: requests and their tokens (settled ones at their
        usage, those never settled at their full reservation). Without a journal: what the
        paid-once cache holds."""
        if self.journal_path:
            return journal_totals(self.journal_path)
        return ray.get(self.replicas[0].paid.remote())

    def shutdown(self) -> None:
        for replica in self.replicas:
            ray.kill(replica)
        if self.limiter is not None:
            ray.kill(self.limiter)
