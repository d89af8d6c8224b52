"""TeacherActor replicas and the TeacherPool that load-balances requests over them."""
from __future__ import annotations

import pyarrow as pa
import ray

from actors.engines import SamplingParams, build_engine
from actors.runtime import BusyClock, pick_device, use_all_cpu_threads
from loopdistill.config import TeacherConfig
from loopdistill.schemas import TEACHER_REQUESTS, TEACHER_RESPONSES, make_table, require_columns


class TeacherActor:
    """One teacher engine (long-lived: the model loads once per run).

    Args:
        config: the teacher section of the run config.
        task_name: the task (used by the programmatic engine).
    """

    def __init__(self, config: TeacherConfig, task_name: str):
        self.config = config
        device = pick_device(config.num_gpus)
        if device == "cpu":
            use_all_cpu_threads()
        self.engine = build_engine(config.engine, config.model, task_name, config.batch_size, device)
        self.clock = BusyClock()

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Input tokens each prompt would cost (chat template included)."""
        return self.engine.count_tokens(prompts)

    def generate(self, requests: pa.Table, seed: int) -> pa.Table:
        """Answer every request. requests: TEACHER_REQUESTS; returns TEACHER_RESPONSES in order."""
        require_columns(requests, TEACHER_REQUESTS, "TeacherActor.generate")
        cfg = self.config
        params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, seed=seed)
        with self.clock.measure():
            gens = self.engine.generate(requests.column("prompt").to_pylist(), params)
        rows = [
            {"request_id": rid, "text": g.text, "input_tokens": g.input_tokens, "output_tokens": g.output_tokens}
            for rid, g in zip(requests.column("request_id").to_pylist(), gens)
        ]
        return make_table(TEACHER_RESPONSES, rows)

    def busy_seconds(self) -> float:
        """Cumulative seconds spent generating."""
        return self.clock.total_s


class TeacherPool:
    """N TeacherActor replicas; a request batch is split into N contiguous shards, one per replica.

    Args:
        config: teacher config; `num_replicas`, `num_cpus`, `num_gpus` size the pool.
        task_name: passed to each replica.
    """

    def __init__(self, config: TeacherConfig, task_name: str):
        self.config = config
        remote = ray.remote(TeacherActor).options(
            num_cpus=config.num_cpus, num_gpus=config.num_gpus, max_restarts=1, max_task_retries=1
        )
        self.replicas = [remote.remote(config, task_name) for _ in range(config.num_replicas)]

    def count_tokens(self, prompts: list[str]) -> list[int]:
        return ray.get(self.replicas[0].count_tokens.remote(prompts))

    def generate(self, requests: pa.Table, seed: int) -> pa.Table:
        """Answer TEACHER_REQUESTS on all replicas in parallel; returns TEACHER_RESPONSES in order.
        Each shard gets its own sampling seed so replicas do not repeat each other's samples."""
        n = len(self.replicas)
        size = -(-requests.num_rows // n) if requests.num_rows else 0
        refs = [
            replica.generate.remote(requests.slice(i * size, size), seed + 1000 * i)
            for i, replica in enumerate(self.replicas)
            if i * size < requests.num_rows
        ]
        tables = ray.get(refs)
        return pa.concat_tables(tables) if tables else make_table(TEACHER_RESPONSES, [])

    def busy_seconds(self) -> float:
        """Summed busy seconds of all replicas."""
        return sum(ray.get([r.busy_seconds.remote() for r in self.replicas]))

    def shutdown(self) -> None:
        for replica in self.replicas:
            ray.kill(replica)
