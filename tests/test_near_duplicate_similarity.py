"""The near-duplicate warning names the example each one is similar to and prints that pair's similarity.

Links are transitive, so a group's original is not always what a member resembles: B ~ A and C ~ B put C in A's
group although C and A are further apart than the threshold. The warning said "C: near-duplicate of A (similarity
of C and B)"."""

from __future__ import annotations

import json

from edgeft.data import dedup
from edgeft.data.check import check_dataset

BASE = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
CHAIN = [BASE, BASE + " and then", BASE + " and then it slept"]


def test_each_member_is_reported_with_the_member_it_matched():
    texts = [dedup.normalize_text(t) for t in CHAIN]
    assert dedup.jaccard(texts[0], texts[2]) < 0.8 <= dedup.jaccard(texts[1], texts[2])
    found = {d.index: d for d in dedup.near_duplicates(texts, 0.8)}
    assert found[2].original == 0 and found[2].match == 1
    assert found[2].similarity == dedup.jaccard(texts[1], texts[2])
    assert found[1].match == 0 and found[1].similarity == dedup.jaccard(texts[0], texts[1])


def test_the_data_check_warning_prints_the_pair_it_names(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [[{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}] for text in CHAIN]
    train.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    warnings = [f.message for f in check_dataset(train).warnings if f.kind == "near-duplicate"]
    texts = [dedup.normalize_text(f"{t} ok") for t in CHAIN]
    assert sorted(warnings) == sorted([
        f"near-duplicate of {train}:1 (similarity {dedup.shown_similarity(dedup.jaccard(texts[0], texts[1]))})",
        f"near-duplicate of {train}:2 (similarity {dedup.shown_similarity(dedup.jaccard(texts[1], texts[2]))}), in "
        f"the group of {train}:1",
    ])


def test_a_similarity_is_never_shown_above_what_it_is():
    assert dedup.shown_similarity(0.996) == "0.99" and dedup.shown_similarity(0.8) == "0.80"
    assert dedup.shown_similarity(0.7999) == "0.79" and dedup.shown_similarity(1.0) == "1.00"
