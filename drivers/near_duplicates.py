"""ROUGE-L near-duplicate search over questions tokenised once, vectorised with rapidfuzz.

ROUGE-L F (Lin 2004, Sec. 3.1, with beta = 1) of token sequences a and b is 2 * LCS(a, b) / (|a| + |b|),
which is exactly rapidfuzz's normalised Indel similarity (Indel distance = |a| + |b| - 2 * LCS). Tokens
are those of the `rouge-score` package without stemming (lower-cased, runs of [a-z0-9]), so a score here
equals `rouge_scorer.RougeScorer(["rougeL"]).score(a, b)["rougeL"].fmeasure` up to float rounding
(tests/cpu/test_decontamination.py compares both on real questions; benchmarks/dedup_speed.py times them).
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
    return float(Indel.normalized_similarity(ta, tb))


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
        out = process.cdist(queries, self._seqs, scorer=Indel.normalized_similarity, dtype=np.float64, workers=1)
        # rapidfuzz scores two empty sequences as identical (1.0); ROUGE-L scores them 0.0.
        empty_q = np.array([not q for q in queries])
        empty_s = np.array([not s for s in self._seqs])
        if empty_q.any() or empty_s.any():
            out[empty_q, :] = 0.0
            out[:, empty_s] = 0.0
        return out

    def nearest(self, text: str) -> tuple[float, str | None]:
        """(highest ROUGE-L F of `text` against the indexed questions, that question); (0.0, None) when
        the index is empty."""
        if not self._seqs:
            return 0.0, None
        row = self.scores([text])[0]
        best = int(np.argmax(row))
        return float(row[best]), self._texts[best]
