"""Paid-once teacher request cache and the spend journal of requests sent.

Cache: key = sha256 of (model, prompt, sampling params with the per-request seed). A retried,
restarted or resumed teacher asks the cache first, so no answer that arrived is ever asked for again.
SQLite in WAL mode; the teacher commits each answer the moment it has it (the transformers and
programmatic engines hand back a batch at a time), so a crash loses only requests still in flight.
Several replicas on one host share the file.

Journal: what was *sent*, which is what a provider bills. Before a request leaves, a reservation
(prompt tokens + max_new_tokens) is appended and fsync'd; when the answer arrives it is settled at the
answer's usage. A reservation never settled (the process died with the request in flight, or it
failed for good) stays charged in full, so the spend read back after any crash is >= what a provider
billed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

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
        # NORMAL: a commit survives the process being killed (the WAL write reached the OS); only a power
        # loss could drop recent answers, which the spend journal still charges, so no fsync per answer.
        self.db.execute("PRAGMA synchronous=NORMAL")
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


class SpendJournal:
    """Append-only JSON-lines record of teacher requests sent (file shared by all replicas; each
    line is one O_APPEND write, so writers on one host do not interleave).

    Lines: {"op": "reserve", "id", "input_tokens", "output_tokens"} (the worst case: estimated prompt
    tokens and max_new_tokens), {"op": "settle", "id", "input_tokens", "output_tokens"} (the usage the
    answer reported), {"op": "release", "id"} (the server answered with a 4xx status such as 429:
    nothing was generated or billed), {"op": "fail", "id"} (an attempt that got no usable answer:
    timeout, connection error, 5xx, unusable body; stays charged in full, as the provider may have
    billed it). A reservation with none of these after it was in flight when its process died.

    Args:
        path: the journal file (created with its directory).
    """

    def __init__(self, path: str | Path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._written = 0  # appends made by this process
        self._synced = 0  # appends known to be on disk

    def _append(self, records: list[dict], sync: bool) -> None:
        data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        with self._lock:
            os.write(self._fd, data)
            self._written += 1
            mine = self._written
        if sync:
            # Group commit: threads that wrote while another fsync ran share the next one, so many
            # requests leaving at once (the HTTP engine's workers) cost a few fsyncs, not one each.
            with self._sync_lock:
                if self._synced < mine:
                    target = self._written
                    os.fsync(self._fd)
                    self._synced = target

    def reserve(self, worst_cases: list[tuple[int, int]]) -> list[str]:
        """Journal one reservation per request about to be sent, (input_tokens, max_new_tokens) each,
        fsync'd before returning (so before any of them leaves). Returns their ids."""
        ids = [uuid.uuid4().hex for _ in worst_cases]
        if ids:
            self._append([{"op": "reserve", "id": i, "input_tokens": int(a), "output_tokens": int(b)}
                          for i, (a, b) in zip(ids, worst_cases)], sync=True)
        return ids

    def settle(self, settled: list[tuple[str, int, int]]) -> None:
        """Settle reservations at their real usage: (id, input_tokens, output_tokens) each. Not
        fsync'd: a settle lost to a power cut leaves the reservation charged in full (an overcount)."""
        if settled:
            self._append([{"op": "settle", "id": i, "input_tokens": int(a), "output_tokens": int(b)}
                          for i, a, b in settled], sync=False)

    def release(self, ids: list[str]) -> None:
        """Cancel reservations of requests the server refused (4xx): not charged, not counted."""
        if ids:
            self._append([{"op": "release", "id": i} for i in ids], sync=False)

    def fail(self, ids: list[str]) -> None:
        """Mark attempts that ended without a usable answer; their reservations stay charged in full."""
        if ids:
            self._append([{"op": "fail", "id": i} for i in ids], sync=False)

    def carry_over(self, paid: dict[str, int]) -> None:
        """Start a journal for a run directory written before journals existed: its cache's
        `stats()` (requests, input_tokens, output_tokens) become one fsync'd settled entry."""
        self._append([{"op": "carry", "id": "carried-over", **{k: int(paid[k]) for k in ("requests", "input_tokens", "output_tokens")}}],
                      sync=True)

    def close(self) -> None:
        os.close(self._fd)


def journal_totals(path: str | Path) -> dict[str, int]:
    """Spend in a SpendJournal file: requests sent and their tokens (settled ones at their usage, the
    others at their reservation), plus `open` (reservations neither settled nor failed) and `failed`.
    A missing file is no spend; a torn last line (the writer died mid-write, before sending) is skipped."""
    reserved: dict[str, tuple[int, int]] = {}
    settled: dict[str, tuple[int, int]] = {}
    failed: set[str] = set()
    released: set[str] = set()
    carried = {"requests": 0, "input_tokens": 0, "output_tokens": 0}
    if Path(path).is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    op, rid = rec["op"], rec["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if op == "reserve":
                    reserved[rid] = (int(rec["input_tokens"]), int(rec["output_tokens"]))
                elif op == "settle":
                    settled[rid] = (int(rec["input_tokens"]), int(rec["output_tokens"]))
                elif op == "fail":
                    failed.add(rid)
                elif op == "release":
                    released.add(rid)
                elif op == "carry":
                    carried = {k: int(rec[k]) for k in carried}
    for rid in released:
        reserved.pop(rid, None)
    n_in, n_out = carried["input_tokens"], carried["output_tokens"]
    for rid, worst in reserved.items():
        real = settled.get(rid) if rid not in failed else None
        n_in += (real or worst)[0]
        n_out += (real or worst)[1]
    return {"requests": carried["requests"] + len(reserved), "input_tokens": n_in, "output_tokens": n_out,
            "open": len(set(reserved) - set(settled) - failed), "failed": len(failed & set(reserved))}
