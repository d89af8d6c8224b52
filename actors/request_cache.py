"""Paid-once teacher request cache and the spend journal of requests sent.

Cache: key = sha256 of (model, prompt, sampling params with the per-request seed). A retried,
restarted or resumed teacher asks the cache first, so no answer that arrived is ever asked for again.
SQLite in WAL mode; the teacher commits each answer the moment it has it (the transformers and
programmatic engines hand back a batch at a time), so a crash loses only requests still in flight.
Several replicas on one host share the file.

Journal: what was *sent*, which is what a provider bills, and the gate every attempt passes. Before
an attempt leaves (a first send, an HTTP retry, a restarted replica sending again), its reservation
(prompt tokens + max_new_tokens) is checked against the run's hard limits and appended, in one step
under an exclusive lock on the journal file, and fsync'd; an attempt that does not fit is journaled as
refused and never sent. When the answer arrives it is settled at the answer's usage. A reservation
never settled (the process died with the request in flight, or it failed) stays charged in full, so
the spend read back after any crash is >= what a provider billed.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sqlite3
import threading
import uuid
from dataclasses import asdict
from pathlib import Path

from actors.engines.base import Generation, SamplingParams
from loopdistill.config import BudgetConfig


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


def teacher_limit_exceeded(limits: BudgetConfig | None, input_tokens: int, output_tokens: int) -> str | None:
    """The first hard teacher limit that a spend of `input_tokens` / `output_tokens` (tokens, all
    requests together) would pass, named as "budget.<field>" with the figures, or None when it fits
    (a spend equal to a limit fits). Limits: budget.teacher_input_tokens, teacher_output_tokens, and
    usd at the configured prices per million tokens. limits None: no limit."""
    if limits is None:
        return None
    if limits.teacher_input_tokens is not None and input_tokens > limits.teacher_input_tokens:
        return f"budget.teacher_input_tokens: {input_tokens} > {limits.teacher_input_tokens}"
    if limits.teacher_output_tokens is not None and output_tokens > limits.teacher_output_tokens:
        return f"budget.teacher_output_tokens: {output_tokens} > {limits.teacher_output_tokens}"
    if limits.usd is not None:
        usd = limits.teacher_usd(input_tokens, output_tokens)
        if usd > limits.usd:
            return f"budget.usd: {usd:.6g} > {limits.usd:.6g}"
    return None


class _Tally:
    """Running spend of a journal's records, in any order (a record may arrive before or after the
    reserve it names): settled requests at their usage, the others (open, failed) at their
    reservation, released ones not at all."""

    def __init__(self):
        self.worst: dict[str, tuple[int, int]] = {}
        self.real: dict[str, tuple[int, int]] = {}
        self.failed: set[str] = set()
        self.released: set[str] = set()
        self.refused = 0
        self.carried = (0, 0, 0)  # requests, input_tokens, output_tokens of a carry-over line
        self.requests = self.input_tokens = self.output_tokens = 0  # of reservations (carry not included)

    def _charge(self, rid: str) -> tuple[int, int, int]:
        if rid in self.released or rid not in self.worst:
            return 0, 0, 0
        n_in, n_out = self.worst[rid] if rid in self.failed or rid not in self.real else self.real[rid]
        return 1, n_in, n_out

    def apply(self, rec: dict) -> None:
        op, rid = rec["op"], rec["id"]
        if op == "refuse":
            self.refused += 1
            return
        if op == "carry":
            self.carried = (int(rec["requests"]), int(rec["input_tokens"]), int(rec["output_tokens"]))
            return
        before = self._charge(rid)
        if op == "reserve":
            self.worst[rid] = (int(rec["input_tokens"]), int(rec["output_tokens"]))
        elif op == "settle":
            self.real[rid] = (int(rec["input_tokens"]), int(rec["output_tokens"]))
        elif op == "fail":
            self.failed.add(rid)
        elif op == "release":
            self.released.add(rid)
        else:
            return
        after = self._charge(rid)
        self.requests += after[0] - before[0]
        self.input_tokens += after[1] - before[1]
        self.output_tokens += after[2] - before[2]

    def feed(self, data: bytes) -> int:
        """Apply the complete lines of `data`; returns the bytes consumed (an incomplete last line is
        left for later). A line that does not parse (torn by a writer that died mid-write) is skipped."""
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                self.apply(json.loads(line))
            except (ValueError, KeyError, TypeError):
                continue
        return end

    def spend(self) -> tuple[int, int]:
        """(input_tokens, output_tokens) charged so far, carry-over included."""
        return self.carried[1] + self.input_tokens, self.carried[2] + self.output_tokens

    def totals(self) -> dict[str, int]:
        n_in, n_out = self.spend()
        live = set(self.worst) - self.released
        return {"requests": self.carried[0] + self.requests, "input_tokens": n_in, "output_tokens": n_out,
                "open": len(live - set(self.real) - self.failed), "failed": len(live & self.failed),
                "refused": self.refused}


class SpendJournal:
    """Append-only JSON-lines record of teacher requests sent, shared by all replicas of a pool (several
    processes), and the budget gate each attempt passes.

    Every append happens under an exclusive `fcntl.flock` on the file, so writers never interleave
    and `reserve` checks and appends as one step across processes: two replicas cannot both admit
    the last request that fits. flock is reliable on a local file system only, so the journal lives
    on the disk of the node that runs the pool's replicas (the run directory); replicas on several
    nodes sharing it over NFS would lose this guarantee.

    Lines: {"op": "reserve", "id", "input_tokens", "output_tokens"} (the worst case: estimated prompt
    tokens and max_new_tokens), {"op": "refuse", "id", "input_tokens", "output_tokens"} (an attempt
    the limits could not pay for: never sent, not charged), {"op": "settle", "id", "input_tokens",
    "output_tokens"} (the usage the answer reported), {"op": "release", "id"} (the server answered
    with a 4xx status such as 429: nothing was generated or billed), {"op": "fail", "id"} (an
    attempt that got no usable answer: timeout, connection error, 5xx, unusable body; stays charged
    in full, as the provider may have billed it). A reservation with none of these after it was in
    flight when its process died, and stays charged in full.

    Args:
        path: the journal file (created with its directory).
        limits: the run's hard limits (budget section); None = no gate (every reservation admitted).
    """

    def __init__(self, path: str | Path, limits: BudgetConfig | None = None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.limits = limits
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        # flock belongs to the open file, which this process's threads share: they queue on this lock
        # first, then on the flock with the other processes.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._tally = _Tally()  # the file's records up to _offset
        self._offset = 0
        self._written = 0  # appends made by this process
        self._synced = 0  # appends known to be on disk

    def _locked_append(self, build) -> list:
        """Under the thread lock and the exclusive flock: read the records other writers appended
        since last time, call build(tally) -> (records, result), append the records; returns
        (result, this process's append number)."""
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                size = os.fstat(self._fd).st_size
                if size > self._offset:
                    self._offset += self._tally.feed(os.pread(self._fd, size - self._offset, self._offset))
                records, result = build(self._tally)
                if records:
                    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
                    if size > self._offset:
                        # An unterminated last line under the lock is a writer that died mid-write:
                        # end it so our first record is not glued to it.
                        data = b"\n" + data
                    os.write(self._fd, data)
                    self._written += 1
                return [result, self._written]
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _sync(self, mine: int) -> None:
        # Group commit: threads that wrote while another fsync ran share the next one, so many
        # requests leaving at once (the HTTP engine's workers) cost a few fsyncs, not one each.
        # Outside the flock: other writers see the records in the page cache at once; the fsync
        # only makes them survive a power loss before the requests leave.
        with self._sync_lock:
            if self._synced < mine:
                target = self._written
                os.fsync(self._fd)
                self._synced = target

    def _append(self, records: list[dict], sync: bool) -> None:
        _, mine = self._locked_append(lambda tally: (records, None))
        if sync:
            self._sync(mine)

    def reserve(self, worst_cases: list[tuple[int, int]]) -> list[str | None]:
        """Admit attempts about to be sent, (input_tokens, max_new_tokens) each, in order: each is
        admitted when everything journaled so far (settled at usage, open or failed at full
        reservation, by every process) plus this reservation stays within `limits`
        (`teacher_limit_exceeded`), else refused. Check and append are one step under the file lock;
        the reservations are fsync'd before returning (so before any of them leaves). Returns one
        id per attempt, None for a refused one (journaled as refused; it must not be sent)."""
        if not worst_cases:
            return []

        def build(tally: _Tally):
            n_in, n_out = tally.spend()
            records, ids = [], []
            for a, b in worst_cases:
                rid = uuid.uuid4().hex
                if teacher_limit_exceeded(self.limits, n_in + int(a), n_out + int(b)):
                    records.append({"op": "refuse", "id": rid, "input_tokens": int(a), "output_tokens": int(b)})
                    ids.append(None)
                else:
                    n_in, n_out = n_in + int(a), n_out + int(b)
                    records.append({"op": "reserve", "id": rid, "input_tokens": int(a), "output_tokens": int(b)})
                    ids.append(rid)
            return records, ids

        ids, mine = self._locked_append(build)
        if any(i is not None for i in ids):
            self._sync(mine)
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
    others at their reservation), plus `open` (reservations neither settled nor failed), `failed`,
    and `refused` (attempts the gate did not let out: not sent, not charged). Read under a shared
    lock, so no append is seen half-written. A missing file is no spend; a torn line (a writer died
    mid-write) is skipped."""
    tally = _Tally()
    if Path(path).is_file():
        with open(path, "rb") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH)
            try:
                tally.feed(f.read())
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return tally.totals()
