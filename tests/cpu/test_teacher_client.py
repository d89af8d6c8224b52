"""TeacherClient over a real TeacherPool (programmatic Game-of-24 teacher, two replicas, local Ray).
What the pool's side recorded (its spend journal and its paid-once request cache) shows that a call
sends only the requests the budget admits, that each was keyed with the seed the client derived from
(run seed, iteration, purpose, request id), and that judge requests are greedy and keyed by the judge
prompt text."""
from __future__ import annotations

from pathlib import Path

from actors.engines import SamplingParams
from actors.request_cache import RequestCache, journal_totals, request_key
from actors.teacher_pool import TeacherPool
from drivers.actor_group import teacher_spec
from drivers.budget import BudgetLedger
from drivers.teacher_client import NO_BUDGET, TeacherClient
from loop_helpers import tiny_config
from loopdistill.config import build_config
from loopdistill.judging import judge_prompt, parse_verdict
from loopdistill.schemas import JUDGE_REQUESTS, TEACHER_REQUESTS, make_table
from loopdistill.seeds import request_seed
from loopdistill.tasks import get_task
from loopdistill.tasks.game24 import question_for

PUZZLES = [question_for(numbers) for numbers in ([1, 2, 3, 4], [2, 3, 4, 5], [1, 1, 4, 6], [3, 3, 8, 8], [4, 4, 10, 10])]


def test_ask_and_judge_through_a_real_pool(tmp_path: Path, shared_data, ray_local):
    config = build_config(tiny_config(tmp_path, shared_data, teacher={"temperature": 0.7, "max_new_tokens": 100, "num_replicas": 2},
                                      budget={"teacher_output_tokens": 250}))
    cache, journal = tmp_path / "cache.sqlite", tmp_path / "journal.jsonl"
    pool = TeacherPool(config.teacher, "game24", teacher_spec(config.teacher), str(cache), str(journal))
    try:
        ledger = BudgetLedger(config.budget)
        client = TeacherClient(pool, ledger, run_seed=3, teacher_config=config.teacher)
        task = get_task("game24")
        rows = [{"request_id": f"it2-answer-s{i}", "prompt": task.answer_prompt(q)} for i, q in enumerate(PUZZLES)]
        reply = client.ask(make_table(TEACHER_REQUESTS, rows), iteration=2, purpose="answer")

        # 100 output tokens reserved per request: 2 fit in 250, a third does not
        assert reply.stop_reason == "" and reply.responses.column("request_id").to_pylist() == ["it2-answer-s0", "it2-answer-s1"]
        assert journal_totals(journal)["requests"] == 2 and ledger.spent.teacher_requests == 2
        assert ledger.spent.teacher_output_tokens == journal_totals(journal)["output_tokens"] > 0  # settled at usage
        namespace = f"{config.teacher.model.path}|programmatic"
        keys = [request_key(namespace, r["prompt"], SamplingParams(100, 0.7, config.teacher.top_p, seed=request_seed(3, 2, "answer", r["request_id"])))
                for r in rows[:2]]
        assert set(RequestCache(cache).get_many(keys)) == set(keys)  # the replicas used the client's seeds

        question, good, bad = PUZZLES[0], "Answer: (1 + 2 + 3) * 4 = 24", "Answer: 1 + 2 + 3 + 4 = 24"
        judged = client.judge(make_table(JUDGE_REQUESTS, [{"request_id": "it2-judge-ab-s0", "question": question, "answer_a": good, "answer_b": bad}]),
                              iteration=2, max_new_tokens=16)
        assert parse_verdict(judged.responses.column("text")[0].as_py()) == (10.0, 1.0)
        key = request_key(namespace, judge_prompt(question, good, bad), SamplingParams(16, 0.0, config.teacher.top_p, seed=0))
        assert set(RequestCache(cache).get_many([key])) == {key}
        assert journal_totals(journal)["requests"] == 3

        broke = TeacherClient(pool, BudgetLedger(config.budget.model_copy(update={"teacher_input_tokens": 1})), 3, config.teacher)
        refused = broke.ask(make_table(TEACHER_REQUESTS, rows[2:]), iteration=2, purpose="answer")
        assert refused.stop_reason == NO_BUDGET and refused.responses.num_rows == 0
        assert journal_totals(journal)["requests"] == 3  # nothing was sent
    finally:
        pool.shutdown()
