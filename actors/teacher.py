"""TeacherActor: one teacher engine replica (actors/teacher_pool.py spreads requests over several).

Paid once: every answer is written to the request cache the moment it arrives (HTTP: as each response
completes, `max_concurrency` in flight; vLLM: as each request of the call's single engine batch
finishes; transformers / programmatic: per `batch_size` batch), and every attempt (first send, HTTP
retry, a restarted replica's re-send) passes the spend journal's budget gate before it leaves
(actors/request_cache.SpendJournal): admitted and journaled, or refused, not sent, and its request
answered empty for this call (counted in `teacher/budget_refused_requests`). Each request arrives
with its sampling seed and its prompt's token count (the teacher client derived and counted them
once), so an answer's cache key never depends on how the pool shards the work, and a resumed run
finds every answered request.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Iterator, Optional

import pyarrow as pa

from actors.engines import AttemptRefused, Generation, JudgeItem, SamplingParams, StreamingEngine, build_engine
from actors.request_cache import RequestCache, SpendJournal, request_key
from actors.runtime import BusyClock, inject_fault, pick_device, use_all_cpu_threads
from loopdistill.config import BudgetConfig, TeacherConfig
from loopdistill.judging import judge_prompt
from loopdistill.schemas import JUDGE_SENDS, TEACHER_RESPONSES, TEACHER_SENDS, make_table, require_columns

# How the uncached requests of a call reach the engine: indices into the call's rows, with their seeds
# and prompt token counts (and, streamed, the send log); see TeacherActor._answer.
_Stream = Callable[[list[int], list[int], list[int], "_SendLog"], Iterator[tuple[int, "Generation | Exception"]]]
_Batch = Callable[[list[int], list[int], list[int]], list[Generation]]


class TeacherRequestsFailed(RuntimeError):
    """Every fresh request of a call failed for good (an outage, a bad key or model): the answers
    that did arrive earlier are kept in the cache; the first error is in the message."""


class _SendLog:
    """What an engine tells the journal about each attempt it sends (see StreamingEngine.stream), and
    the budget gate: the journal admits an attempt's reservation (input tokens + max_new_tokens)
    only if the run's hard limits can still pay for it."""

    def __init__(self, journal: Optional[SpendJournal], max_new_tokens: int):
        self.journal, self.max_new = journal, max_new_tokens
        self.reserved_in: dict[str, int] = {}

    def sent(self, index: int, input_tokens: int):
        """Admit one attempt about to leave; returns its journal token.

        Raises:
            AttemptRefused: the limits cannot pay for it (journaled as refused; do not send it).
        """
        token = self.sent_many([input_tokens])[0]
        if isinstance(token, AttemptRefused):
            raise token
        return token

    def sent_many(self, input_tokens: list[int]) -> list:
        """Admit attempts about to leave, in order: one journal token each, or an AttemptRefused
        (not to be sent) for each the limits cannot pay for."""
        if self.journal is None:
            return [None] * len(input_tokens)
        ids = self.journal.reserve([(n, self.max_new) for n in input_tokens])
        self.reserved_in.update((i, n) for i, n in zip(ids, input_tokens) if i is not None)
        return [i if i is not None else AttemptRefused(
                    f"teacher attempt refused for budget: {n} input + {self.max_new} output tokens do not fit the run's "
                    "hard limits after what the spend journal holds")
                for i, n in zip(ids, input_tokens)]

    def answered(self, token, input_tokens: Optional[int], output_tokens: Optional[int]) -> None:
        if self.journal is None:
            return
        n_in = self.reserved_in.get(token, 0) if input_tokens is None else input_tokens
        n_out = self.max_new if output_tokens is None else output_tokens
        self.journal.settle([(token, n_in, n_out)])

    def refused(self, token) -> None:
        if self.journal is not None:
            self.journal.release([token])

    def failed(self, token) -> None:
        """An attempt that got no usable answer but may have been billed (timeout, connection lost,
        5xx, an unusable body): journaled as failed, so it stays charged in full and is not `open`."""
        if self.journal is not None:
            self.journal.fail([token])


class TeacherActor:
    """One teacher engine (long-lived: the model loads once per run).

    Args:
        config: the teacher section of the run config.
        task_name: the task (used by the programmatic engine).
        cache_path: SQLite file of the paid-once request cache (None: no cache).
        journal_path: the pool's SpendJournal file (None: nothing journaled, no budget gate).
        limiter: the pool's RateLimiterActor handle for engine 'openai' (None: per-engine limits).
        budget: the run's hard limits, which the journal checks every attempt against before it
            leaves (None: no gate).
    """

    def __init__(self, config: TeacherConfig, task_name: str, cache_path: str | None = None,
                 journal_path: str | None = None, limiter=None, budget: BudgetConfig | None = None):
        self.config = config
        device = pick_device(config.num_gpus)
        if device == "cpu":
            use_all_cpu_threads()
        limits = None
        if limiter is not None:
            from actors.rate_limiter import SharedLimits

            limits = SharedLimits(limiter)
        self.engine = build_engine(config.engine, config.model, task_name, config.batch_size, device,
                                   vllm=config.vllm, openai=config.openai, limits=limits)
        self.cache = RequestCache(cache_path) if cache_path else None
        self.journal = SpendJournal(journal_path, budget) if journal_path else None
        self.clock = BusyClock()
        self.failed = 0  # requests that failed for good
        self.refused = 0  # requests whose attempt the budget gate refused (not sent)
        self.truncated = 0  # answers cut at max_new_tokens

    def count_tokens(self, prompts: list[str]) -> list[int]:
        """Input tokens each prompt would cost (chat template included)."""
        return self.engine.count_tokens(prompts)

    def generate(self, sends: pa.Table, max_new_tokens: int | None = None,
                 temperature: float | None = None) -> pa.Table:
        """Answer every request. sends: TEACHER_SENDS (n rows: request_id, prompt, the request's
        sampling seed, 0 for greedy so identical greedy prompts share one answer, and the prompt's
        input tokens as counted by the caller, which the spend journal reserves and HTTP rate limits
        use; nothing is counted again here). Returns TEACHER_RESPONSES (n rows, in order) with `cached`
        True for answers served from the request cache (already paid for, not charged again).
        max_new_tokens / temperature override the config's for this call. A request that failed for
        good, or whose attempt the budget gate refused, gets an empty text and zero tokens (counted in
        `stats`); the answers around it are kept.

        Raises:
            SchemaError: `sends` lacks a TEACHER_SENDS column.
            TeacherRequestsFailed: every request that had to be sent failed for good.
        """
        require_columns(sends, TEACHER_SENDS, "TeacherActor.generate")
        cfg = self.config
        temp = cfg.temperature if temperature is None else temperature
        params = SamplingParams(max_new_tokens or cfg.max_new_tokens, temp, cfg.top_p, seed=0)
        prompts = sends.column("prompt").to_pylist()

        def stream(rows, seeds, tokens, log):
            return self.engine.stream([prompts[i] for i in rows], params, seeds, log=log, input_tokens=tokens)

        def batch(rows, seeds, tokens):
            return self.engine.generate([prompts[i] for i in rows], params, seeds, input_tokens=tokens)

        return self._answer(sends, params, stream, batch)

    def judge(self, sends: pa.Table, max_new_tokens: int) -> pa.Table:
        """Greedy pairwise verdicts (MT-Bench format, loopdistill.judging). sends: JUDGE_SENDS (n rows:
        request_id, question, answer_a, answer_b, `prompt` = judging.judge_prompt of the three, which
        keys the request cache, its seed and its input tokens as counted by the caller); max_new_tokens:
        the reply's length limit. Returns TEACHER_RESPONSES (n rows, in order; `text` is the verdict),
        cached and persisted like `generate`.

        A streaming engine (vLLM, HTTP) generates each `prompt`, which is what an LLM engine's
        JudgeEngine.judge generates, streamed so every verdict is cached and journaled as it arrives
        and a request that fails for good is counted, not raised; other engines are asked
        `engine.judge` per `batch_size` items (the programmatic engine asks its verifier).

        Raises:
            SchemaError: `sends` lacks a JUDGE_SENDS column.
            ValueError: a row's prompt is not the judge prompt of its question and answers.
            TeacherRequestsFailed: every request that had to be sent failed for good.
        """
        require_columns(sends, JUDGE_SENDS, "TeacherActor.judge")
        params = SamplingParams(max_new_tokens, 0.0, self.config.top_p, seed=0)
        prompts = sends.column("prompt").to_pylist()
        items = [JudgeItem(*row) for row in zip(*(sends.column(c).to_pylist() for c in ("question", "answer_a", "answer_b")))]
        for rid, prompt, item in zip(sends.column("request_id").to_pylist(), prompts, items):
            # The prompt is the cache key and what was counted; a different text would be paid for under
            # another request's key.
            if prompt != judge_prompt(*item):
                raise ValueError(f"TeacherActor.judge: request {rid!r}: prompt is not judge_prompt(question, answer_a, answer_b)")

        def stream(rows, seeds, tokens, log):
            return self.engine.stream([prompts[i] for i in rows], params, seeds, log=log, input_tokens=tokens)

        def batch(rows, seeds, tokens):
            return self.engine.judge([items[i] for i in rows], params, seeds, input_tokens=tokens)

        return self._answer(sends, params, stream, batch)

    def _answer(self, sends: pa.Table, params: SamplingParams, stream: _Stream, batch: _Batch) -> pa.Table:
        """TEACHER_RESPONSES for `sends` (rows with request_id, prompt, seed, input_tokens): cached
        answers from the request cache, the others from `stream` (streaming engines) or `batch`."""
        rids = sends.column("request_id").to_pylist()
        prompts = sends.column("prompt").to_pylist()
        seeds = sends.column("seed").to_pylist()
        tokens = sends.column("input_tokens").to_pylist()
        namespace = self.cache_namespace()
        keys = [request_key(namespace, p, replace(params, seed=s)) for p, s in zip(prompts, seeds)]
        cached = self.cache.get_many(keys) if self.cache else {}
        fresh = self._generate_missing(keys, seeds, tokens, cached, params, stream, batch)
        rows = []
        for rid, key in zip(rids, keys):
            gen = cached.get(key) or fresh.get(key) or Generation(text="", input_tokens=0, output_tokens=0)
            rows.append({"request_id": rid, "text": gen.text, "input_tokens": gen.input_tokens,
                         "output_tokens": gen.output_tokens, "cached": key in cached})
        return make_table(TEACHER_RESPONSES, rows)

    def cache_namespace(self) -> str:
        """What besides prompt and sampling decides an answer: the model and engine, and for an HTTP
        teacher the server and its model name (the local model there is only the tokenizer). The
        server is named without credentials or a trailing slash: a resume must give the base URL
        again (its credentials are not stored) and may give a rotated key, and still find its answers."""
        cfg = self.config
        namespace = f"{cfg.model.path}|{cfg.engine}"
        if cfg.engine == "openai":
            from actors.engines.openai_engine import redact_url

            namespace += f"|{redact_url(cfg.openai.base_url).rstrip('/')}|{cfg.openai.model}"
        return namespace

    def _generate_missing(self, keys, seeds, tokens, cached, params, stream: _Stream, batch: _Batch) -> dict[str, Generation]:
        """Generate the uncached requests (each distinct key once, at its first row), persisting each
        answer as soon as it exists (streaming engines) or each batch (the others). Failed requests
        and refused ones are left out of the result."""
        first: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key not in cached:
                first.setdefault(key, i)
        todo = list(first)
        if not todo:
            return {}
        todo_rows = [first[k] for k in todo]
        todo_seeds = [seeds[i] for i in todo_rows]
        todo_tokens = [tokens[i] for i in todo_rows]
        log = _SendLog(self.journal, params.max_new_tokens)
        fresh: dict[str, Generation] = {}
        errors: list[Exception] = []
        refused = 0
        with self.clock.measure():
            if isinstance(self.engine, StreamingEngine):
                for index, result in stream(todo_rows, todo_seeds, todo_tokens, log):
                    if isinstance(result, AttemptRefused):
                        refused += 1
                        continue
                    if isinstance(result, Exception):
                        errors.append(result)
                        continue
                    self._keep(todo[index], result, fresh)
                    inject_fault("teacher.generate")  # dies after a persisted answer, others in flight
            else:
                size = self.config.batch_size
                for start in range(0, len(todo), size):
                    part = slice(start, start + size)
                    sent = log.sent_many(todo_tokens[part])
                    go = [j for j, token in enumerate(sent) if not isinstance(token, AttemptRefused)]
                    refused += len(sent) - len(go)
                    if not go:
                        continue
                    rows, seeds_, counts = todo_rows[part], todo_seeds[part], todo_tokens[part]
                    try:
                        gens = batch([rows[j] for j in go], [seeds_[j] for j in go], [counts[j] for j in go])
                    except Exception:  # an engine error: these were sent, not answered (not left `open`)
                        for j in go:
                            log.failed(sent[j])
                        raise
                    for key, token, gen in zip([todo[part][j] for j in go], [sent[j] for j in go], gens):
                        log.answered(token, gen.input_tokens, gen.output_tokens)
                        self._keep(key, gen, fresh)
                    inject_fault("teacher.generate")  # dies after a persisted batch, before the rest
        self.failed += len(errors)
        self.refused += refused
        if errors and not fresh and not refused:  # a refusal is a budget stop, not an outage
            raise TeacherRequestsFailed(f"all {len(todo)} teacher requests of this call failed; first error: {errors[0]}")
        return fresh

    def _keep(self, key: str, gen: Generation, fresh: dict) -> None:
        fresh[key] = gen
        self.truncated += int(gen.truncated)
        if self.cache:
            self.cache.put_many([(key, gen)])

    def busy_seconds(self) -> float:
        """Cumulative seconds spent generating."""
        return self.clock.total_s

    def stats(self) -> dict[str, float]:
        """Counters since start: requests failed for good, requests the budget gate refused, answers
        truncated at max_new_tokens, HTTP retries and seconds waited on rate limits (0 for local engines)."""
        return {
            "teacher/failed_requests": self.failed,
            "teacher/budget_refused_requests": self.refused,
            "teacher/truncated_answers": self.truncated,
            "teacher/retries": getattr(self.engine, "retries", 0),
            "teacher/rate_limit_wait_s": getattr(self.engine, "rate_limit_wait_s", 0.0),
        }

    def paid(self) -> dict[str, int]:
        """Distinct requests answered and their tokens, from the request cache (zeros without one)."""
        return self.cache.stats() if self.cache else {"requests": 0, "input_tokens": 0, "output_tokens": 0}
