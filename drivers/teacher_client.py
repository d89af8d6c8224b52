"""TeacherClient: the life of a teacher request, in one place.

A call counts its prompts' tokens once, admits the requests the budget can pay for (each reserved at
prompt tokens + max_new_tokens), gives each its sampling seed (loopdistill.seeds.request_seed, a
function of the run seed, iteration, purpose and request id only: never of sharding or batching),
sends them through the TeacherPool, and settles the ledger from the pool's spend journal.

The admission here is a forecast; the guarantee is the journal's gate (actors/request_cache.SpendJournal),
which every attempt passes before it leaves, retries and a restarted replica's re-sends included. An
attempt the gate refuses is not sent: its request comes back answered empty, the answers around it are
kept (in the reply and the request cache), and the reply carries a budget stop reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from drivers.budget import BudgetLedger
from loopdistill.config import TeacherConfig
from loopdistill.judging import judge_prompt
from loopdistill.schemas import (
    JUDGE_REQUESTS, JUDGE_SENDS, TEACHER_REQUESTS, TEACHER_RESPONSES, TEACHER_SENDS, make_table, require_columns,
)
from loopdistill.seeds import request_seed

NO_BUDGET = "budget exhausted: the teacher budget cannot pay for one more request"
# A call the journal's gate cut short: some attempt (a retry, a replica's re-send, or a request sent
# after others settled above their estimate) did not fit the hard limits and was not sent.
REFUSED = "budget exhausted: the teacher budget refused {n} attempt(s) of this call (not sent; the answers that arrived are kept)"


@dataclass
class TeacherReply:
    """responses: TEACHER_RESPONSES of the admitted requests, in request order (the first n of the
    call: fewer than asked when the budget ran short); stop_reason: non-empty when the budget could
    not pay for a single request (NO_BUDGET; then `responses` is empty), or when the journal's gate
    refused an attempt during the call (REFUSED; then `responses` holds every admitted request, the
    refused ones with an empty text and zero tokens)."""

    responses: pa.Table
    stop_reason: str = ""


class TeacherClient:
    """Budgeted, seeded calls to the teacher pool.

    Args:
        pool: actors.teacher_pool.TeacherPool (count_tokens, generate(TEACHER_SENDS, ...),
            judge(JUDGE_SENDS, ...), paid, stats, busy_seconds).
        ledger: the run's BudgetLedger; reserved against before and settled after every call.
        run_seed: loop.seed, the root of every request seed.
        teacher_config: the teacher section (default max_new_tokens and temperature).
    """

    def __init__(self, pool, ledger: BudgetLedger, run_seed: int, teacher_config: TeacherConfig):
        self.pool, self.ledger, self.run_seed, self.config = pool, ledger, run_seed, teacher_config
        self._refused: int | None = None  # attempts the journal had refused before this call

    def ask(self, requests: pa.Table, iteration: int, purpose: str, max_new_tokens: int | None = None,
            temperature: float | None = None) -> TeacherReply:
        """Answer TEACHER_REQUESTS (n rows) with what the budget pays for. Request i samples with
        request_seed(run_seed, iteration, purpose, request_id_i), or seed 0 when greedy (temperature 0:
        identical greedy prompts then share one cached answer). max_new_tokens / temperature (tokens,
        unitless) override the teacher config's for this call.

        Raises:
            loopdistill.schemas.SchemaError: `requests` lacks a column of its schema.
            actors.teacher.TeacherRequestsFailed: every request that had to be sent failed for good.
        """
        require_columns(requests, TEACHER_REQUESTS, "TeacherClient.ask")
        temp = self.config.temperature if temperature is None else temperature
        ids = requests.column("request_id").to_pylist()
        seeds = [request_seed(self.run_seed, iteration, purpose, rid) if temp > 0 else 0 for rid in ids]
        sends, reason = self._admit(requests, requests.column("prompt").to_pylist(), seeds, TEACHER_SENDS, max_new_tokens)
        if sends is None:
            return TeacherReply(make_table(TEACHER_RESPONSES, []), reason)
        return self._settle(self.pool.generate(sends, max_new_tokens, temperature))

    def judge(self, requests: pa.Table, iteration: int, max_new_tokens: int) -> TeacherReply:
        """Judge JUDGE_REQUESTS (n rows), greedy (seed 0), each reply at most max_new_tokens tokens; the
        prompt sent, counted and cached is loopdistill.judging.judge_prompt(question, answer_a, answer_b).
        `iteration`: the call's iteration, as for `ask` (greedy requests take no seed from it).

        Raises:
            loopdistill.schemas.SchemaError: `requests` lacks a column of its schema.
            actors.teacher.TeacherRequestsFailed: every request that had to be sent failed for good.
        """
        require_columns(requests, JUDGE_REQUESTS, "TeacherClient.judge")
        columns = [requests.column(c).to_pylist() for c in ("question", "answer_a", "answer_b")]
        prompts = [judge_prompt(q, a, b) for q, a, b in zip(*columns)]
        sends, reason = self._admit(requests, prompts, [0] * requests.num_rows, JUDGE_SENDS, max_new_tokens)
        if sends is None:
            return TeacherReply(make_table(TEACHER_RESPONSES, []), reason)
        return self._settle(self.pool.judge(sends, max_new_tokens))

    def _admit(self, requests: pa.Table, prompts: list[str], seeds: list[int], schema: pa.Schema,
               max_new_tokens: int | None) -> tuple[pa.Table | None, str]:
        """(the first n requests the budget pays for as `schema` rows with prompt, seed and input
        tokens, ""), or (None, why none can be sent: "" for no requests, else NO_BUDGET). Prompts are
        counted here once; the actors reuse the count for the journal and rate limits."""
        if requests.num_rows == 0:
            return None, ""
        prompt_tokens = self.pool.count_tokens(prompts)
        n = self.ledger.affordable_requests(prompt_tokens, max_new_tokens or self.config.max_new_tokens)
        if n == 0:
            return None, NO_BUDGET
        if self._refused is None:
            self._refused = int(self.pool.paid().get("refused", 0))
        admitted = requests.slice(0, n)
        extra = {"prompt": prompts[:n], "seed": seeds[:n], "input_tokens": prompt_tokens[:n]}
        columns = [pa.array(extra[f.name], f.type) if f.name in extra else admitted.column(f.name).combine_chunks() for f in schema]
        return pa.Table.from_arrays(columns, schema=schema), ""

    def _settle(self, responses: pa.Table) -> TeacherReply:
        # Settled from the spend journal rather than from `responses`: it holds every request sent,
        # including those of a replica that died mid-call (charged in full) and answers a retried call
        # serves from the cache; and it counts the attempts its gate refused.
        paid = self.pool.paid()
        self.ledger.reconcile_teacher(paid)
        refused = int(paid.get("refused", 0))
        new, self._refused = refused - (self._refused or 0), refused
        return TeacherReply(responses, REFUSED.format(n=new) if new > 0 else "")

    def stats(self) -> dict[str, float]:
        """The pool's cumulative counters (teacher/failed_requests, ...)."""
        return self.pool.stats()

    def busy_seconds(self) -> float:
        """Summed busy seconds of the teacher replicas."""
        return self.pool.busy_seconds()

    def paid(self) -> dict[str, int]:
        """What was sent (requests, input_tokens, output_tokens), from the spend journal."""
        return self.pool.paid()
