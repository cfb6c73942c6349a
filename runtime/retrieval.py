"""Lexical retrieval for the baseline ladder: BM25 over user turns (via `bm25s`), and the near-duplicate test that
keeps an eval question's own copies out of what is retrieved for it.

Ranking is by score, then by document index, with scores rounded to 9 decimals first: float summation order must
not reorder two documents whose scores are equal in exact arithmetic, or the same eval would pick different shots
on another machine. BM25 here is Lucene's variant (bm25s' default): idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
term weight tf / (tf + k1 (1 - b + b |d| / avgdl)); each distinct query word counts once.

Near-duplicates are what `edgeft data check` calls them: exact Jaccard >= 0.8 of character 4-gram shingles of the
normalised text (edgeft/data/dedup.py finds them corpus-wide with MinHash; here only a handful of candidates per
question are checked, so the exact set comparison is cheap). The normal form and the shingles are the shared leaf
convert.common.normalize's, so both sides judge the same text the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

from convert.common.normalize import normalize_text, shingle_set

K1, B = 1.5, 0.75
NEAR_DUPLICATE = 0.8
_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """BM25's tokens: lower-cased runs of letters, digits and underscores."""
    return _WORD.findall(text.lower())


@lru_cache(maxsize=65536)
def shingles(text: str) -> frozenset[str]:
    return frozenset(shingle_set(normalize_text(text)))


def jaccard(a: str, b: str) -> float:
    left, right = shingles(a), shingles(b)
    union = len(left | right)
    return len(left & right) / union if union else 1.0


def is_near_duplicate(a: str, b: str, threshold: float = NEAR_DUPLICATE) -> bool:
    return jaccard(a, b) >= threshold


class BM25Index:
    """BM25 over `documents` (texts); `ranked(query)` gives document indices best first.

    Example: `BM25Index(["count orders", "list customers"]).ranked("how many orders", k=1)` -> `[0]`.
    """

    def __init__(self, documents: Sequence[str]):
        import bm25s

        self.n = len(documents)
        tokens = [words(text) or [""] for text in documents]  # an empty document still needs a row
        self._index = bm25s.BM25(k1=K1, b=B, method="lucene", dtype="float64")
        self._index.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        terms = [t for t in dict.fromkeys(words(query)) if t in self._index.vocab_dict]
        if not terms:
            return np.zeros(self.n)
        return np.asarray(self._index.get_scores(terms), dtype=np.float64)

    def ranked(self, query: str, k: int, *, skip: Callable[[int], bool] = lambda index: False) -> list[int]:
        """The `k` best documents for `query` that `skip` does not refuse, by score then index."""
        order = rank_order(self.scores(query))
        chosen: list[int] = []
        for index in order:
            if len(chosen) == k:
                break
            if not skip(int(index)):
                chosen.append(int(index))
        return chosen


def rank_order(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score, ties by ascending index (stable sort of the negated, rounded scores)."""
    return np.argsort(-np.round(scores, 9), kind="stable")
