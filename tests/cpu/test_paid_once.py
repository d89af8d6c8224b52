"""Paid once, counted from the provider's side: a local OpenAI-compatible teacher server (a test double
on the far side of the HTTP boundary, which is what these tests are about) logs each request's arrival
and completion and answers with uneven delays (fast and slow requests in one call). The real loop runs
with teacher.engine=openai against it and is killed mid-call:

- the driver's whole process group is SIGKILLed while some answers of the current call have arrived and
  others are in flight, then `--resume`d;
- a teacher replica is killed (ray.kill, restartable) while its call has answers in and others in flight.

From the server's log: no request answered >= 0.5 s before the kill is sent again; a request in flight
at the kill is sent at most once more; the ledger's spend >= what the server billed (requests, input
and output tokens); the run's outcome equals an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loop_helpers import run_outcome, tiny_config

REPO = Path(__file__).resolve().parents[2]
SERVED = "tiny-teacher"
MARGIN_S = 0.5  # an answer completed this long before the kill has certainly reached the client


class TeacherServer:
    """OpenAI-compatible chat server on 127.0.0.1 answering like the Game-of-24 programmatic teacher
    (so the loop's parsing works), deterministic in (prompt, seed). Half the requests take ~0.1 s, the
    others 2-3 s. Each event is appended to `events` (and a JSON-lines file): arrive / complete, with
    the request's identity key, wall time and the usage it billed (tokens counted with the teacher
    tokenizer and chat template, as a vLLM server would)."""

    def __init__(self, log_path: Path, tokenizer_path: str = "tiny-random-llama"):
        from loopdistill.models import format_prompt, load_tokenizer
        from loopdistill.tasks import get_task

        self.task = get_task("game24")
        self.tokenizer = load_tokenizer(tokenizer_path)
        self.format_prompt = format_prompt
        self.events: list[dict] = []
        self.lock = threading.Lock()
        self.log = open(log_path, "a")
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": SERVED, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if body.get("model") != SERVED:
                    self._json(404, {"error": {"message": f"model {body.get('model')} not found"}})
                    return
                if "REJECT" in body["messages"][-1]["content"]:  # a request the provider refuses for good
                    server.record(event="rejected", key="-")
                    self._json(400, {"error": {"message": "rejected"}})
                    return
                self._json(200, server.answer(body))

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client died; the answer was generated (and billed) all the same

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def record(self, **event) -> None:
        event["t"] = time.time()
        with self.lock:
            self.events.append(event)
            self.log.write(json.dumps(event) + "\n")
            self.log.flush()

    def answer(self, body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        seed, limit = body.get("seed"), int(body.get("max_tokens") or body.get("max_completion_tokens"))
        key = hashlib.sha256(json.dumps([prompt, seed, limit, body.get("temperature")]).encode()).hexdigest()[:16]
        self.record(event="arrive", key=key)
        h = int(key, 16)
        time.sleep(0.1 if h % 2 else 2.0 + (h % 11) / 10)  # uneven: fast and slow requests in one call
        text = self.task.programmatic_teacher(prompt, random.Random(f"{seed}\n{prompt}"))
        out_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        finish = "stop"
        if len(out_ids) > limit:
            out_ids, finish = out_ids[:limit], "length"
            text = self.tokenizer.decode(out_ids)
        n_in = len(self.tokenizer(self.format_prompt(self.tokenizer, prompt, True), add_special_tokens=False)["input_ids"])
        # Billed the moment it is generated, whether or not the client is still there to read it.
        self.record(event="complete", key=key, input_tokens=n_in, output_tokens=len(out_ids))
        return {"id": key, "object": "chat.completion", "model": SERVED,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": len(out_ids), "total_tokens": n_in + len(out_ids)}}

    def snapshot(self) -> list[dict]:
        with self.lock:
            return list(self.events)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.log.close()


def get_prompts(n: int) -> list[str]:
    """n Game-of-24 answer prompts (fixed puzzles: the server's delays, keyed on content, are then fixed too)."""
    from loopdistill.tasks import get_task
    from loopdistill.tasks.game24 import question_for

    task = get_task("game24")
    return [task.answer_prompt(question_for([1 + i % 13, 2 + i % 11, 3 + i % 7, 4 + i % 5])) for i in range(n)]


def mid_call(events: list[dict], now: float) -> bool:
    """Some answers of the current call arrived >= MARGIN_S + 0.1 s ago and other requests are in flight."""
    done = {e["key"]: e["t"] for e in events if e["event"] == "complete"}
    arrived = [e for e in events if e["event"] == "arrive"]
    in_flight = [e for e in arrived if e["key"] not in done]
    if not in_flight:
        return False
    call_start = min(e["t"] for e in in_flight)  # the oldest request still open belongs to this call
    return any(call_start - 0.05 <= t <= now - MARGIN_S - 0.1 for t in done.values())


def check_server_log(events: list[dict], kill_t: float) -> None:
    """The paid-once promises, judged from the server's log around one kill at `kill_t`."""
    before = [e for e in events if e["t"] < kill_t]
    after_arrivals = [e["key"] for e in events if e["t"] >= kill_t and e["event"] == "arrive"]
    done_before = {e["key"]: e["t"] for e in before if e["event"] == "complete"}
    answered_early = {k for k, t in done_before.items() if t <= kill_t - MARGIN_S}
    in_flight = {e["key"] for e in before if e["event"] == "arrive"} - set(done_before)
    assert answered_early and in_flight, "the kill did not land mid-call"
    resent = answered_early & set(after_arrivals)
    assert not resent, f"{len(resent)} requests answered >= {MARGIN_S} s before the kill were sent again"
    for key in in_flight:
        assert after_arrivals.count(key) <= 1, f"request {key}, in flight at the kill, was sent {after_arrivals.count(key)} more times"


def billed(events: list[dict]) -> dict[str, int]:
    """What the server generated (and so billed) among `events`: requests and their usage."""
    done = [e for e in events if e["event"] == "complete"]
    return {"requests": len(done), "input_tokens": sum(e["input_tokens"] for e in done),
            "output_tokens": sum(e["output_tokens"] for e in done)}


def check_spend(ledger: dict, server: dict) -> None:
    """The ledger's spend >= what the server billed (`billed(events)`)."""
    assert ledger["teacher_requests"] >= server["requests"]
    assert ledger["teacher_input_tokens"] >= server["input_tokens"]
    assert ledger["teacher_output_tokens"] >= server["output_tokens"]


def http_config(tmp_path: Path, data: Path, name: str, base_url: str) -> dict:
    teacher = {"engine": "openai", "model": {"path": "tiny-random-llama"}, "max_new_tokens": 256, "batch_size": 2,
               "openai": {"base_url": base_url, "model": SERVED, "api_key_env": None, "max_concurrency": 4,
                          "max_retries": 2, "backoff_s": 0.05, "timeout_s": 30}}
    return tiny_config(tmp_path, data, name, teacher=teacher, loop={"seeds_per_iteration": 6}, ray={"num_cpus": 4})


def _cli(args: list[str], popen: bool = False, env: dict | None = None):
    cmd = [sys.executable, "-m", "drivers.cli", "run", *args]
    full_env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=900)


def _run_dir(root: Path) -> Path:
    return next(p.parent for p in root.glob("*/config.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = TeacherServer(tmp_path_factory.mktemp("server") / "requests.jsonl")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, shared_data, server):
    """An uninterrupted run against the same (deterministic) server."""
    tmp = tmp_path_factory.mktemp("ref")
    path = tmp / "ref.yaml"
    path.write_text(yaml.safe_dump(http_config(tmp, shared_data, "ref", server.base_url)))
    proc = _cli([str(path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome = run_outcome(_run_dir(tmp / "ref"))
    assert any(rows for _, rows in outcome), "no synthetic rows: the outcome comparison would be empty"
    return outcome


def test_driver_killed_mid_call_then_resumed(tmp_path, shared_data, server, reference):
    start = len(server.snapshot())
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(http_config(tmp_path, shared_data, "killed", server.base_url)))
    proc = _cli([str(path)], popen=True)
    deadline = time.time() + 600
    kill_t = None
    while time.time() < deadline and proc.poll() is None:
        if mid_call(server.snapshot()[start:], time.time()):
            kill_t = time.time()
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert kill_t is not None, "the run ended (or timed out) before a call was caught mid-way"
    proc.wait()
    run_dir = _run_dir(tmp_path / "killed")
    resumed = _cli(["--resume", str(run_dir)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = server.snapshot()[start:]
    check_server_log(events, kill_t)
    check_spend(json.loads((run_dir / "state.json").read_text())["ledger"], billed(events))
    assert run_outcome(run_dir) == reference


def test_teacher_replica_killed_mid_call(tmp_path, shared_data, server, reference, ray_local, monkeypatch):
    """In-process driver; a watcher thread ray.kill()s the teacher replica (restartable, so Ray
    restarts it and retries its call) while the call has answers in and others in flight."""
    import actors.teacher_pool as teacher_module
    from drivers.loop import run
    from loopdistill.config import build_config

    pools = []
    original_init = teacher_module.TeacherPool.__init__

    def recording_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        pools.append(self)

    monkeypatch.setattr(teacher_module.TeacherPool, "__init__", recording_init)
    start = len(server.snapshot())
    kills: list[float] = []
    stop = threading.Event()

    def watcher():
        while not stop.is_set():
            if pools and mid_call(server.snapshot()[start:], time.time()):
                kills.append(time.time())
                ray_local.kill(pools[0].replicas[0], no_restart=False)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    try:
        summary = run(build_config(http_config(tmp_path, shared_data, "replica", server.base_url)))
    finally:
        stop.set()
        thread.join(5)
    assert kills, "the run ended before a call was caught mid-way"
    assert summary.iterations_completed == 2
    run_dir = Path(summary.run_dir)
    events = server.snapshot()[start:]
    check_server_log(events, kills[0])
    check_spend(json.loads((run_dir / "state.json").read_text())["ledger"], billed(events))
    assert run_outcome(run_dir) == reference
