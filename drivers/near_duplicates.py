"""ROUGE-L near-duplicate search over questions tokenised once, vectorised with rapidfuzz.

ROUGE-L F (Lin 2004, Sec. 3.1, with beta = 1) of token sequences a and b is 2 * LCS(a, b) / (|a| + |b|).
rapidfuzz's Indel distance is |a| + |b| - 2 * LCS, so the LCS length comes out of it exactly; the F is then
computed with rouge-score's own float steps (P = LCS / |b|, R = LCS / |a|, F = 2PR / (P + R)). Tokens are
those of the `rouge-score` package without stemming (lower-cased, runs of [a-z0-9]), so a score here is
bit-identical to `rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure`, and a "> threshold"
decision is the same even where the exact F equals the threshold (rouge-score's 7 of 10 + 10 tokens is
0.7000000000000001, and drops at 0.7; the plain normalised similarity 1 - 6/20 = 0.7 would keep it).
tests/cpu/test_decontamination.py compares both on real questions and at such ties;
benchmarks/dedup_speed.py times them.
Each distinct token is mapped to an integer once, so one candidate is compared with N earlier questions
in one `rapidfuzz.process.cdist` call (C++ loop, bit-parallel LCS) instead of N Python-level DP tables.
"""
from __future__ import annotations

import re

import numpy as np
from rapidfuzz import process
from rapidfuzz.distance import Indel

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """The tokens rouge-score's default tokenizer yields without a stemmer: lower-case, every run of
    characters outside [a-z0-9] is a separator (so non-ASCII letters separate too)."""
    return _NON_ALPHANUMERIC.sub(" ", text.lower()).split()


def rouge_l_f(a: str, b: str) -> float:
    """ROUGE-L F-measure (beta = 1) of two texts, in [0, 1]; 0.0 when either has no token."""
    ta, tb = rouge_tokens(a), rouge_tokens(b)
    if not ta or not tb:
        return 0.0
    lcs = (len(ta) + len(tb) - Indel.distance(ta, tb)) / 2
    precision, recall = lcs / len(tb), lcs / len(ta)  # the float steps of `_f_from_distance`, on scalars
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _f_from_distance(distance: np.ndarray, len_a, len_b) -> np.ndarray:
    """ROUGE-L F from Indel distances (any shape, broadcast with the token counts len_a, len_b >= 1),
    in rouge-score's float order: LCS is exact, then P = LCS / len_b, R = LCS / len_a, F = 2PR / (P + R)
    (0 where LCS = 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):  # empty texts: masked to 0 by the callers' checks
        lcs = (np.asarray(len_a, dtype=np.float64) + np.asarray(len_b, dtype=np.float64) - distance) / 2
        precision, recall = lcs / len_b, lcs / len_a
        total = precision + recall
        return np.where(total > 0, 2 * precision * recall / total, 0.0)


class TokenIndex:
    """Questions held as integer token sequences, for repeated "is this new text near any of them?" queries.

    Args:
        texts: the questions to start with (any number; tokenised once here).
    The vocabulary grows as texts are added; ids only need to be consistent within one index.
    """

    def __init__(self, texts: list[str] | tuple[str, ...] = ()):
        self._vocab: dict[str, int] = {}
        self._texts: list[str] = []
        self._seqs: list[list[int]] = []
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self._seqs)

    def encode(self, text: str) -> list[int]:
        """The text's ROUGE tokens as ids (new tokens get new ids)."""
        vocab = self._vocab
        return [vocab.setdefault(tok, len(vocab)) for tok in rouge_tokens(text)]

    def add(self, text: str) -> None:
        self._texts.append(text)
        self._seqs.append(self.encode(text))

    def scores(self, texts: list[str]) -> np.ndarray:
        """ROUGE-L F of each of `texts` (rows) against every indexed question (columns), float64 array
        of shape (len(texts), len(self)). A text without tokens scores 0.0 against everything."""
        queries = [self.encode(t) for t in texts]
        if not queries or not self._seqs:
            return np.zeros((len(queries), len(self._seqs)))
        distance = process.cdist(queries, self._seqs, scorer=Indel.distance, dtype=np.int64, workers=1)
        len_q = np.array([len(q) for q in queries], dtype=np.float64)[:, None]
        len_s = np.array([len(s) for s in self._seqs], dtype=np.float64)[None, :]
        out = _f_from_distance(distance.astype(np.float64), len_q, len_s)
        # ROUGE-L scores a text without tokens 0.0 against anything (LCS = 0 gives that already).
        return np.where((len_q > 0) & (len_s > 0), out, 0.0)

    def nearest(self, text: str) -> tuple[float, str | None]:
        """(highest ROUGE-L F of `text` against the indexed questions, that question); (0.0, None) when
        the index is empty."""
        if not self._seqs:
            return 0.0, None
        row = self.scores([text])[0]
        best = int(np.argmax(row))
        return float(row[best]), self._texts[best]
