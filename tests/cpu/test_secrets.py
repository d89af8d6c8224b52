"""Credentials stay out of everything a run writes: config.json, MLflow (params, tags, artifacts), the
run's log, the terminal; an API key pasted as `api_key_env` is refused without being echoed; `.env`
files are not uploaded by `ray job submit`."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from loop_helpers import tiny_config
from loopdistill.config import dump_config, load_config
from loopdistill.secrets import RedactingFilter, redact

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
PASSWORD = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    "text, clean",
    [
        (f"https://user:{PASSWORD}@api.example.com/v1", "https://***@api.example.com/v1"),
        (f"http://{PASSWORD}@127.0.0.1:8000", "http://***@127.0.0.1:8000"),
        (f"error at https://u:p@ss:{PASSWORD}@h/v1/chat (retry 3)", "error at https://***@h/v1/chat (retry 3)"),
        (f"https://h/v1?api_key={PASSWORD}&model=x", "https://h/v1?api_key=***&model=x"),
        ("https://api.example.com/v1 and me@example.com", "https://api.example.com/v1 and me@example.com"),
    ],
)
def test_redact_url_credentials(text, clean):
    assert redact(text) == clean


def test_redact_walks_nested_data():
    data = {"teacher": {"openai": {"base_url": f"https://a:{PASSWORD}@h/v1"}}, "list": [f"ws://x:{PASSWORD}@h"], "n": 3}
    out = redact(data)
    assert PASSWORD not in json.dumps(out) and out["n"] == 3 and out["list"] == ["ws://***@h"]


def test_pasted_key_as_api_key_env_is_refused_without_echo(capsys):
    from drivers.cli import main

    key = "sk-proj-Abc123_def456-XYZ"
    assert main(["check-config", QUICKSTART, f"teacher.openai.api_key_env={key}"]) == 2
    err = capsys.readouterr().err
    assert "teacher.openai.api_key_env" in err and key not in err and "Abc123" not in err
    assert load_config(QUICKSTART, ["teacher.openai.api_key_env=MY_TEACHER_KEY"]).teacher.openai.api_key_env == "MY_TEACHER_KEY"
    for key in ("hf_AbCdEf0123456789", "ghp_abc123def456", "a1b2c3d4e5f60718293a4b5c6d7e8f90"):  # keys that are identifiers
        assert main(["check-config", QUICKSTART, f"teacher.openai.api_key_env={key}"]) == 2
        assert key not in capsys.readouterr().err


def test_mistyped_key_field_is_not_echoed(capsys):
    from drivers.cli import main

    assert main(["check-config", QUICKSTART, "teacher.openai.api_key=sk-live-Zyx987"]) == 2
    err = capsys.readouterr().err
    assert "teacher.openai.api_key" in err and "Zyx987" not in err


def test_study_env_values_stay_out_of_the_source_tag(monkeypatch):
    from drivers.tracking import source_tags

    monkeypatch.setattr(sys, "argv", ["loopdistill", "study", "c.yaml", "--env", "OPENAI_API_KEY=sk-Qwe321", "--env=HF_TOKEN=hf_Asd654"])
    command = source_tags()["mlflow.source.name"]
    assert "Qwe321" not in command and "Asd654" not in command and "OPENAI_API_KEY=***" in command and "HF_TOKEN=***" in command


def test_check_config_and_dump_redact(capsys):
    from drivers.cli import main

    url = f"https://user:{PASSWORD}@api.example.com/v1"
    assert main(["check-config", QUICKSTART, f"teacher.openai.base_url={url}"]) == 0
    out = capsys.readouterr().out
    assert PASSWORD not in out and "https://***@api.example.com/v1" in out
    config = load_config(QUICKSTART, [f"teacher.openai.base_url={url}"])
    assert config.teacher.openai.base_url == url  # the running process keeps the real URL
    assert PASSWORD not in dump_config(config)


def test_logging_filter_redacts_messages_and_tracebacks(tmp_path):
    logger = logging.getLogger("loopdistill.test_secrets")
    handler = logging.FileHandler(tmp_path / "log.txt")
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("connecting to %s", f"https://u:{PASSWORD}@h/v1")
        try:
            raise ConnectionError(f"refused: https://u:{PASSWORD}@h/v1")
        except ConnectionError:
            logger.exception("teacher failed")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert PASSWORD not in text and text.count("https://***@h/v1") >= 2 and "ConnectionError" in text


class _Endpoint:
    """An OpenAI-compatible endpoint double (our side of the HTTP boundary is under test): lists the
    model, answers every completion with HTTP 500, and records the Authorization headers it got."""

    def __init__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen = self.auth = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status: int, body: dict) -> None:
                seen.append(self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._reply(200, {"data": [{"id": "default"}]})

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self._reply(500, {"error": "overloaded"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()


def test_credentials_in_teacher_url_reach_no_file_log_or_mlflow(tmp_path, shared_data):
    """A real run against a credentialed endpoint that fails every completion: the endpoint gets the
    credentials, and neither the terminal, the run directory (config.json, run.log, state, worker
    logs) nor the MLflow store (params, the error tag, artifacts) holds the password."""
    import base64

    endpoint = _Endpoint()
    url = f"http://user:{PASSWORD}@127.0.0.1:{endpoint.port}/v1"
    cfg = tiny_config(tmp_path, shared_data, "secret", ray={"num_cpus": 4}, loop={"iterations": 1, "seeds_per_iteration": 2})
    cfg["teacher"].update({"engine": "openai", "openai": {"base_url": url, "max_retries": 0, "timeout_s": 5, "api_key_env": None}})
    path = tmp_path / "secret.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        proc = subprocess.run([sys.executable, "-m", "drivers.cli", "run", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        endpoint.stop()
    assert proc.returncode != 0, proc.stderr[-2000:]  # every completion fails
    expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert expected in endpoint.auth  # the running process used the real URL
    assert PASSWORD not in proc.stdout + proc.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "secret.yaml"]
    names = {p.name for p in written}
    assert {"config.json", "run.log", "state.json", "mlflow.db"} <= names, names
    for p in written:
        assert PASSWORD.encode() not in p.read_bytes(), p
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("secret").experiment_id])[0]
    assert run.info.status == "FAILED"
    assert run.data.params["teacher.openai.base_url"] == f"http://***@127.0.0.1:{endpoint.port}/v1"
    assert "error" in run.data.tags and PASSWORD not in run.data.tags["error"]


def test_ray_job_upload_leaves_env_files_behind(tmp_path):
    """The working-dir package Ray builds for `ray job submit` with cluster/runtime_env.yaml's excludes
    holds the code but no .env file (at any depth)."""
    from ray._private.runtime_env.packaging import create_package

    excludes = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())["excludes"]
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "main.py").write_text("print(1)\n")
    (work / ".env").write_text(f"OPENAI_API_KEY={PASSWORD}\n")
    (work / "sub" / ".env.local").write_text(f"KEY={PASSWORD}\n")
    (work / "sub" / "teacher.env").write_text(f"KEY={PASSWORD}\n")
    target = tmp_path / "pkg.zip"
    create_package(str(work), target, include_gitignore=True, include_parent_dir=False, excludes=excludes)
    names = zipfile.ZipFile(target).namelist()
    assert "main.py" in names
    assert not [n for n in names if Path(n).name.startswith(".env") or n.endswith(".env")], names
