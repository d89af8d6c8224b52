"""BADGE's diverse-and-uncertain batch choice: k-means++ seeding over gradient embeddings.

Source: Ash et al. 2020, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower Bounds"
(ICLR), Sec. 3: the first point is the one of largest gradient norm, each next one is drawn with
probability proportional to its squared distance to the nearest point already chosen (Arthur &
Vassilvitskii 2007, k-means++). Large norms (high loss) and spread-out points are both preferred.
"""
from __future__ import annotations

import numpy as np


def kmeans_pp_seeding(embeddings: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of m rows of `embeddings` (n, d) chosen by BADGE's k-means++ seeding.

    Rows identical to a chosen one have distance 0 and are never drawn while others remain; when every
    remaining row has distance 0, the rest are taken at random.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = x.shape[0]
    m = min(m, n)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [int(np.argmax(np.einsum("ij,ij->i", x, x)))]
    dist2 = np.sum((x - x[chosen[0]]) ** 2, axis=1)
    while len(chosen) < m:
        dist2[chosen] = 0.0
        total = dist2.sum()
        if total <= 0:
            rest = np.setdiff1d(np.arange(n), chosen)
            chosen.extend(rng.permutation(rest)[: m - len(chosen)].tolist())
            break
        nxt = int(rng.choice(n, p=dist2 / total))
        chosen.append(nxt)
        dist2 = np.minimum(dist2, np.sum((x - x[nxt]) ** 2, axis=1))
    return np.array(chosen, dtype=np.int64)
