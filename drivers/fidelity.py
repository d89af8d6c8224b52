"""Fidelity of selection and synthesis, per iteration (the analysis of Kessler et al. 2025,
arXiv 2512.00884, Sec. 5): are the selected seeds harder than the pool, does the synthetic data stay
close to the seed distribution, and does a hard seed give a hard child under the same student?
Pure functions except `synthesis_fidelity`, which asks the student (a Ray call) to score the new
questions; the runner logs their output to MLflow.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable

import numpy as np
import pyarrow as pa

from loopdistill.schemas import SEEDS, project


def selection_summary(scores: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """Mean and median strategy score of the pool (n scores) and of the selected indices."""
    scores = np.asarray(scores, dtype=float)
    picked = scores[np.asarray(selected, dtype=np.int64)]
    out = {"select/pool_mean_score": float(scores.mean()), "select/pool_median_score": float(np.median(scores))}
    if picked.size:
        out.update({"select/selected_mean_score": float(picked.mean()), "select/selected_median_score": float(np.median(picked))})
    return out


def token_distribution(token_ids: list[list[int]]) -> Counter:
    """Unigram counts over all token ids of all texts."""
    counts: Counter = Counter()
    for ids in token_ids:
        counts.update(ids)
    return counts


def total_variation(p: Counter, q: Counter) -> float:
    """Total-variation distance 0.5 * sum_v |p(v) - q(v)| between two unigram distributions given as
    counts (0 = identical, 1 = disjoint supports). Raises ValueError when either is empty."""
    n_p, n_q = sum(p.values()), sum(q.values())
    if n_p == 0 or n_q == 0:
        raise ValueError("total variation of an empty token distribution is undefined")
    return 0.5 * sum(abs(p.get(v, 0) / n_p - q.get(v, 0) / n_q) for v in set(p) | set(q))


def token_tv_distance(tokenizer, texts_a: list[str], texts_b: list[str]) -> float:
    """Total-variation distance between the unigram token distributions of two sets of texts, under
    `tokenizer` (a Hugging Face tokenizer; no special tokens)."""
    ids = lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
    return total_variation(token_distribution(ids(texts_a)), token_distribution(ids(texts_b)))


def parent_child_spearman(parent_score: dict[str, float], children: list[tuple[str, float]]) -> float | None:
    """Spearman rank correlation between each seed's score and its synthetic child's score (children:
    (parent_id, child score) pairs). None with fewer than 3 pairs or a constant side (undefined)."""
    from scipy.stats import spearmanr

    pairs = [(parent_score[pid], score) for pid, score in children if pid in parent_score]
    if len(pairs) < 3:
        return None
    x, y = np.array(pairs, dtype=float).T
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(spearmanr(x, y).statistic)


def pair_texts(table: pa.Table) -> list[str]:
    """"question\nanswer" of each SEEDS-like row (the text whose tokens are compared)."""
    return [f"{q}\n{a}" for q, a in zip(table.column("question").to_pylist(), table.column("answer").to_pylist())]


def first_child_rows(synthetic: pa.Table) -> list[int]:
    """Row index of the first synthetic child of each parent (rejection sampling repeats questions)."""
    seen, rows = set(), []
    for i, pid in enumerate(synthetic.column("parent_id").to_pylist()):
        if pid not in seen:
            seen.add(pid)
            rows.append(i)
    return rows


def synthesis_fidelity(tokenizer, predict: Callable[[pa.Table], pa.Table], synthetic: pa.Table,
                       predictions: pa.Table, seeds: pa.Table) -> dict[str, float]:
    """Fidelity metrics of one iteration's SYNTHETIC rows: token TV distance to the SEEDS pool, and the
    Spearman correlation between each selected seed's loss (from `predictions`, PREDICTIONS of the
    pool) and its first child's loss under `predict` (the same student, before retraining)."""
    if synthetic.num_rows == 0:
        return {}
    out = {"fidelity/token_tv_distance": token_tv_distance(tokenizer, pair_texts(synthetic), pair_texts(seeds))}
    children = synthetic.take(pa.array(first_child_rows(synthetic), pa.int64()))
    child_loss = predict(project(children, SEEDS)).column("loss").to_pylist()
    parents = dict(zip(predictions.column("id").to_pylist(), predictions.column("loss").to_pylist()))
    rho = parent_child_spearman(parents, list(zip(children.column("parent_id").to_pylist(), child_loss)))
    if rho is not None:
        out["fidelity/spearman_parent_child_loss"] = rho
    out["fidelity/child_mean_loss"] = float(np.mean(child_loss))
    return out
