"""TeacherActor replicas and the TeacherPool that load-balances requests over them."""
from __future__ import annotations

import pyarrow as pa
import ray

from actors.engines import Generation, SamplingParams, build_engine
from actors.request_cache import RequestCache, request_key
from actors.runtime import BusyClock, inject_fault, pick_device, use_all_cpu_threads
from loopdistill.config import TeacherConfig
from loopdistill.schemas import TEACHER_REQUESTS, TEACHER_RESPONSES, make_table, require_columns


class TeacherActor:
    """One teacher engine (long-lived: the model loads once per run).

    Args:
        config: the teacher section of the run config.
        task_name: the task (used by the programmatic engine).
        cache_path: SQLite file of the paid-once request cache (None: no cache).
    """

    def __init__(self, config: TeacherConfig, task_name: str, cache_path: str | None = None):
        self.config = config
        device = pick_device(config.num_gpus)
        if device == "cpu":
            use_all_cpu_threads()
        self.engine = build_engine(config.engine, config.model, task_name, config.batch_size, device,
                                   vllm=config.vllm, openai=config.openai)
        self.cache = RequestCache(cache_path) if cache_path else None
        self.clock = BusyClock()

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Input tokens each prompt would cost (chat template included)."""
        return self.engine.count_tokens(prompts)

    def generate(self, requests: pa.Table, seed: int, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> pa.Table:
        """Answer every request. requests: TEACHER_REQUESTS; returns TEACHER_RESPONSES in order, with
        `cached` True for answers served from the request cache (already paid for, not charged again).
        max_new_tokens / temperature override the config's for this call (e.g. a short, greedy judge)."""
        require_columns(requests, TEACHER_REQUESTS, "TeacherActor.generate")
        cfg = self.config
        params = SamplingParams(
            max_new_tokens or cfg.max_new_tokens, cfg.temperature if temperature is None else temperature,
            cfg.top_p, seed=seed,
        )
        prompts = requests.column("prompt").to_pylist()
        keys = [request_key(self.cache_namespace(), p, params) for p in prompts]
        cached = self.cache.get_many(keys) if self.cache else {}
        fresh = self._generate_missing(prompts, keys, cached, params)
        rows = []
        for rid, key in zip(requests.column("request_id").to_pylist(), keys):
            gen = cached.get(key) or fresh[key]
            rows.append({"request_id": rid, "text": gen.text, "input_tokens": gen.input_tokens,
                         "output_tokens": gen.output_tokens, "cached": key in cached})
        return make_table(TEACHER_RESPONSES, rows)

    def cache_namespace(self) -> str:
        """What besides prompt and sampling decides an answer: the model and engine, and for an HTTP
        teacher the server and its model name (the local model there is only the tokenizer)."""
        cfg = self.config
        namespace = f"{cfg.model.path}|{cfg.engine}"
        if cfg.engine == "openai":
            namespace += f"|{cfg.openai.base_url}|{cfg.openai.model}"
        return namespace

    def _generate_missing(self, prompts, keys, cached, params) -> dict[str, Generation]:
        """Generate the uncached prompts batch by batch, persisting each batch as soon as it is done."""
        todo = list(dict.fromkeys(k for k in keys if k not in cached))
        prompt_of = dict(zip(keys, prompts))
        fresh: dict[str, Generation] = {}
        size = self.config.batch_size
        for start in range(0, len(todo), size):
            batch = todo[start : start + size]
            with self.clock.measure():
                gens = self.engine.generate([prompt_of[k] for k in batch], params)
            fresh.update(zip(batch, gens))
            if self.cache:
                self.cache.put_many(list(zip(batch, gens)))
            inject_fault("teacher.generate")  # dies after a persisted batch, before the rest
        return fresh

    def busy_seconds(self) -> float:
        """Cumulative seconds spent generating."""
        return self.clock.total_s

    def paid(self) -> dict[str, int]:
        """Distinct requests answered and their tokens, from the request cache (zeros without one)."""
        return self.cache.stats() if self.cache else {"requests": 0, "input_tokens": 0, "output_tokens": 0}


class TeacherPool:
    """N TeacherActor replicas; a request batch is split into N contiguous shards, one per replica.

    Args:
        config: teacher config; `num_replicas`, `num_cpus`, `num_gpus` size the pool.
        task_name: passed to each replica.
        cache_path: the replicas' shared paid-once request cache (SQLite file), or None.
    """

    def __init__(self, config: TeacherConfig, task_name: str, cache_path: str | None = None):
        self.config = config
        remote = ray.remote(TeacherActor).options(
            num_cpus=config.num_cpus, num_gpus=config.num_gpus,
            max_restarts=config.max_restarts, max_task_retries=config.max_restarts,  # generate() is idempotent
        )
        self.replicas = [remote.remote(config, task_name, cache_path) for _ in range(config.num_replicas)]

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return ray.get(self.replicas[0].count_tokens.remote(prompts))

    def generate(self, requests: pa.Table, seed: int, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> pa.Table:
        """Answer TEACHER_REQUESTS on all replicas in parallel; returns TEACHER_RESPONSES in order.
        Each shard gets its own sampling seed so replicas do not repeat each other's samples;
        max_new_tokens / temperature override the config's for this call."""
        n = len(self.replicas)
        size = -(-requests.num_rows // n) if requests.num_rows else 0
        refs = [
            replica.generate.remote(requests.slice(i * size, size), seed + 1000 * i, max_new_tokens, temperature)
            for i, replica in enumerate(self.replicas)
            if i * size < requests.num_rows
        ]
        tables = ray.get(refs)
        return pa.concat_tables(tables) if tables else make_table(TEACHER_RESPONSES, [])

    def busy_seconds(self) -> float:
        """Summed busy seconds of all replicas."""
        return sum(ray.get([r.busy_seconds.remote() for r in self.replicas]))

    def paid(self) -> dict[str, int]:
        """What the shared paid-once cache holds: requests, input_tokens, output_tokens."""
        return ray.get(self.replicas[0].paid.remote())

    def shutdown(self) -> None:
        for replica in self.replicas:
            ray.kill(replica)
