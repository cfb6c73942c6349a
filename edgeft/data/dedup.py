"""Exact and near-duplicate detection: normalised text, character shingles, MinHash and LSH banding in numpy.

Near-duplicates are what a person would call "the same example with typos": so the shingles are character 4-grams
of the normalised text (one typo disturbs 4 of ~hundreds of shingles; word n-grams would lose several words each).
The signature is one-permutation MinHash (one 64-bit hash per shingle, split into `BINS` bins, the minimum kept per
bin), which costs one pass instead of one per permutation; LSH banding over the bins proposes candidate pairs (by
sorted neighbourhood inside each band bucket, so templated data with huge buckets stays linear), the MinHash
estimate discards the clearly dissimilar ones, and each remaining candidate is confirmed with the exact Jaccard
similarity of its two shingle sets. 100k conversations take about 4 CPU-seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

# normalize_text is re-exported: data check and split call dedup.normalize_text.
from convert.common.normalize import SHINGLE_CHARS, normalize_text, shingle_set  # noqa: F401

BINS = 64  # signature length
BAND_ROWS = 4  # bins per LSH band: 16 bands; a pair at Jaccard 0.8 shares a band with probability > 0.999
EMPTY = np.uint32(0xFFFFFFFF)
NEIGHBOURS = 4  # pairs per document per band inside a bucket (every pair when the bucket holds <= 5)
_CHUNK_DOCS = 20_000  # bounded memory: shingles are built for this many documents at a time

def _mix64(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a well-spread 64-bit hash (used for band keys, where quality matters more than speed).
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _shingle_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(document index, 64-bit hash) of every character shingle of `texts` (already normalised)."""
    encoded = [t.encode("utf-8").ljust(SHINGLE_CHARS) for t in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    n_windows = len(data) - SHINGLE_CHARS + 1
    packed = data[:n_windows].astype(np.uint32)
    for j in range(1, SHINGLE_CHARS):  # 4 bytes fit in 32 bits: the packed value *is* the shingle, no collisions
        packed <<= np.uint32(8)
        packed |= data[j : j + n_windows]
    # Windows that start in the last SHINGLE_CHARS-1 bytes of a document run into the next one: drop them.
    ends = np.cumsum(lengths)
    inside = np.ones(n_windows, dtype=bool)
    tails = (ends[:, None] - np.arange(1, SHINGLE_CHARS)[None, :]).ravel()
    inside[tails[tails < n_windows]] = False
    windows_per_doc = lengths - (SHINGLE_CHARS - 1)
    docs = np.repeat(np.arange(len(texts), dtype=np.int64), windows_per_doc)
    # Multiply-xorshift: one multiply spreads the 32-bit shingle over 64 bits; enough for MinHash on packed bytes.
    hashes = packed[inside].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    hashes ^= hashes >> np.uint64(29)
    return docs, hashes


def minhash_signatures(texts: Sequence[str]) -> np.ndarray:
    """(len(texts), BINS) uint32 one-permutation MinHash signatures of normalised texts; EMPTY marks empty bins."""
    signatures = np.full((len(texts), BINS), EMPTY, dtype=np.uint32)
    for lo in range(0, len(texts), _CHUNK_DOCS):
        docs, hashes = _shingle_hashes(texts[lo : lo + _CHUNK_DOCS])
        bins = (hashes & np.uint64(BINS - 1)).astype(np.int64)
        values = (hashes >> np.uint64(32)).astype(np.uint32)
        values[values == EMPTY] -= 1  # keep the sentinel unambiguous
        flat = signatures[lo : lo + _CHUNK_DOCS].reshape(-1)
        np.minimum.at(flat, docs * BINS + bins, values)
        signatures[lo : lo + _CHUNK_DOCS] = flat.reshape(-1, BINS)
    return signatures


def _band_keys(signatures: np.ndarray) -> np.ndarray:
    """(n, bands) uint64: one hash per band of BAND_ROWS bins; bands whose bins are all empty get a unique key."""
    n, bands = len(signatures), BINS // BAND_ROWS
    keys = np.zeros((n, bands), dtype=np.uint64)
    for band in range(bands):
        rows = signatures[:, band * BAND_ROWS : (band + 1) * BAND_ROWS].astype(np.uint64)
        key = np.full(n, band, dtype=np.uint64)
        for column in range(BAND_ROWS):
            key = _mix64(key ^ rows[:, column])
        # Texts too short to fill a band must not all meet in the "everything empty" bucket.
        empty = ~(rows != EMPTY).any(axis=1)
        key[empty] = _mix64(np.flatnonzero(empty).astype(np.uint64) + np.uint64(1 << 40))
        keys[:, band] = key
    return keys


def candidate_pairs(signatures: np.ndarray, window: int = NEIGHBOURS) -> np.ndarray:
    """(k, 2) index pairs (i < j) proposed by LSH banding.

    Per band, documents are sorted by (this band's key, the next bands' keys) and each is paired with the next
    `window` documents of its bucket. A small bucket is thus paired completely; a huge bucket (templated data,
    where common shingles hold the minimum of many bins) is paired by sorted neighbourhood, in which near-duplicates
    sit next to each other because they also share the following bands. Cost stays linear in the number of texts.
    """
    n = len(signatures)
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys = _band_keys(signatures)
    bands = keys.shape[1]
    found = []
    for band in range(bands):
        following = [keys[:, (band + k) % bands] for k in (2, 1)]
        order = np.lexsort(following + [keys[:, band]])  # last key is the primary one
        bucket = keys[order, band]
        for step in range(1, min(window, n - 1) + 1):
            same = bucket[step:] == bucket[:-step]
            found.append(np.stack([order[:-step][same], order[step:][same]], axis=1))
    pairs = np.concatenate(found)
    if not len(pairs):
        return pairs.reshape(0, 2).astype(np.int64)
    pairs.sort(axis=1)
    codes = np.sort(pairs[:, 0].astype(np.int64) * n + pairs[:, 1])
    # Sort-based unique: numpy's hash-based np.unique is several times slower on millions of int64.
    codes = codes[np.concatenate([[True], codes[1:] != codes[:-1]])]
    return np.stack([codes // n, codes % n], axis=1)


def estimated_similarity(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 500_000) -> np.ndarray:
    """MinHash estimate of the Jaccard similarity of each pair (bins empty in both are not counted)."""
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), chunk):
        part = pairs[lo : lo + chunk]
        a, b = signatures[part[:, 0]], signatures[part[:, 1]]
        both_empty = (a == EMPTY) & (b == EMPTY)
        equal = (a == b) & ~both_empty
        out[lo : lo + chunk] = equal.sum(axis=1) / np.maximum((~both_empty).sum(axis=1), 1)
    return out


def jaccard(a: str, b: str) -> float:
    """Exact Jaccard similarity of the character-shingle sets of two normalised texts."""
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / max(len(sa | sb), 1)


@dataclass(frozen=True)
class NearDuplicate:
    index: int  # the later example
    original: int  # the earliest example of its group
    match: int  # the member of the group `index` is most similar to (links are transitive: not always `original`)
    similarity: float  # exact Jaccard of `index` with `match`


def near_duplicates(texts: Sequence[str], threshold: float = 0.8) -> list[NearDuplicate]:
    """Groups of near-duplicate texts (normalised by the caller): every member but the first, with its original.

    Exact Jaccard >= `threshold` links two texts; links are transitive (union-find), so a group's original is its
    earliest member.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError("near-duplicate threshold must be in (0, 1]")
    texts = list(texts)
    if len(texts) < 2:
        return []
    signatures = minhash_signatures(texts)
    pairs = candidate_pairs(signatures)
    if len(pairs):
        # Most candidates from big buckets are far apart: a quarter of the signature throws them out cheaply
        # (equal empty bins count as agreement here, so short texts are never thrown out by it).
        quarter = signatures[:, : BINS // 4]
        agree = np.concatenate([
            (quarter[pairs[lo : lo + 1_000_000, 0]] == quarter[pairs[lo : lo + 1_000_000, 1]]).sum(axis=1)
            for lo in range(0, len(pairs), 1_000_000)
        ])
        pairs = pairs[agree >= (threshold - 0.35) * (BINS // 4)]
        # The estimate's standard error at 64 bins is ~0.05: keep a margin, the exact check decides.
        pairs = pairs[estimated_similarity(signatures, pairs) >= threshold - 0.15]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best: dict[int, tuple[float, int]] = {}  # member -> (its highest similarity, the member it is with)
    for i, j in pairs.tolist():
        score = jaccard(texts[i], texts[j])
        if score >= threshold:
            root_i, root_j = find(i), find(j)
            if root_i != root_j:
                parent[max(root_i, root_j)] = min(root_i, root_j)  # the earliest member stays the root
            for member, other in ((i, j), (j, i)):
                if score > best.get(member, (-1.0, 0))[0]:
                    best[member] = (score, other)
    found = []
    for index in sorted(best):
        root = find(index)
        if root != index:
            score, match = best[index]
            found.append(NearDuplicate(index, root, match, score))
    return found


def shown_similarity(similarity: float) -> str:
    """Two decimals, rounded down: a near-duplicate that is not identical never reads 1.00, and one just at the
    threshold never reads above it."""
    return f"{int(similarity * 100 + 1e-9) / 100:.2f}"


def group_ids(n: int, duplicates: Sequence[NearDuplicate]) -> list[int]:
    """For each of n items, the index of its group's original (itself when it has no near-duplicate)."""
    groups = list(range(n))
    for dup in duplicates:
        groups[dup.index] = dup.original
    return groups
