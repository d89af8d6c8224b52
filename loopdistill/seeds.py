"""Sampling seeds of teacher requests: one derivation, from what a request is (run seed, iteration,
purpose, request id, its prompt), never from how the work is batched, sharded or spread over replicas.
"""
from __future__ import annotations

import hashlib


def prompt_seeds(prompts: list[str], seed: int) -> list[int]:
    """A sampling seed per prompt (31-bit ints), from (seed, prompt, how often the prompt occurred
    before in the list): a prompt's sample does not depend on which other prompts share its batch,
    and repeats of one prompt (several responses per question) still differ."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        k = seen.get(p, 0)
        seen[p] = k + 1
        digest = hashlib.blake2b(f"{seed}\n{k}\n{p}".encode(), digest_size=4).digest()
        out.append(int.from_bytes(digest, "big") & 0x7FFFFFFF)
    return out


def teacher_seed(*parts) -> int:
    """The one derivation of teacher sampling seeds: a 31-bit int hashed from `parts`, in practice
    (run seed, iteration, purpose) for a call and then (call seed, request_id) per request (see
    `request_seed`), so a request's seed is a function of (run seed, iteration, purpose, request_id)
    only. It depends on no batch, shard or replica count, so a resumed run that splits the work
    differently asks for (and finds cached) the very same requests."""
    digest = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def request_seed(run_seed: int, iteration: int, purpose: str, request_id: str) -> int:
    """The sampling seed (31-bit int) of one teacher request: teacher_seed of (the call seed of
    (run seed, iteration, purpose), request_id). Callers send 0 instead for greedy (temperature 0)
    requests."""
    return teacher_seed(teacher_seed(run_seed, iteration, purpose), request_id)


def draw_seed(run_seed: int, iteration: int, purpose: str) -> int:
    """The seed of a driver-side random draw of iteration `iteration` ("select": softmax sampling and
    set strategies, "badge": the gradient-embedding projection, "forecast": the bootstrap), hashed
    like the teacher's. A sum such as run_seed + iteration would give replicate r (run seed s + r) at
    iteration t + 1 the very stream of replicate r + 1 at iteration t: a study's replicates would not
    be independent draws."""
    return teacher_seed(run_seed, iteration, purpose)
