"""Paid-once teacher request cache: a response is stored the moment it arrives, keyed by content.

Key = sha256 of (model, prompt, sampling params, per-request seed). A retried, restarted or resumed
teacher asks the cache first, so no request is ever paid twice. SQLite in WAL mode: each answered batch
is committed at once (a crash loses at most the batch in flight) and several replicas on one host can
share the file.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from actors.engines.base import Generation, SamplingParams


def request_key(model: str, prompt: str, params: SamplingParams) -> str:
    """Content hash of one request (hex sha256)."""
    payload = json.dumps({"model": model, "prompt": prompt, "params": asdict(params)}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


class RequestCache:
    """Persistent map request key -> Generation (text and token counts).

    Args:
        path: SQLite file; its directory is created.
    """

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, text TEXT NOT NULL, "
            "input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL)"
        )

    def get_many(self, keys: list[str]) -> dict[str, Generation]:
        """The cached responses among `keys`."""
        found: dict[str, Generation] = {}
        for start in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key, text, input_tokens, output_tokens FROM responses WHERE key IN ({marks})", chunk
            )
            for key, text, n_in, n_out in rows:
                found[key] = Generation(text=text, input_tokens=n_in, output_tokens=n_out)
        return found

    def put_many(self, items: list[tuple[str, Generation]]) -> None:
        """Store answered requests in one transaction (first answer wins)."""
        with self.db:
            self.db.executemany(
                "INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?)",
                [(k, g.text, g.input_tokens, g.output_tokens) for k, g in items],
            )

    def stats(self) -> dict[str, int]:
        """Distinct requests stored and their summed tokens (what was paid, once each)."""
        n, n_in, n_out = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0) FROM responses"
        ).fetchone()
        return {"requests": n, "input_tokens": n_in, "output_tokens": n_out}

    def lookup(self, key: str) -> Optional[Generation]:
        return self.get_many([key]).get(key)
