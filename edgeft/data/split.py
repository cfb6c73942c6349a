"""`edgeft data split`: a train/eval split where near-duplicates never straddle the border.

A random line-level split of a dataset with paraphrased copies puts one copy in train and its twin in eval, and the
eval then measures memorisation. So examples are grouped first (exact and near-duplicates, the same MinHash
grouping `data check` uses) and whole groups are assigned to one side.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from edgeft.data import dedup
from edgeft.data.io import scan_jsonl
from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_dir, refuse_foreign_folder, refuse_own_input

# What a split writes: --overwrite replaces a folder that holds nothing else.
SPLIT_FILES = ("train.jsonl", "eval.jsonl", "split.json")


def group_examples(conversations: list[list[dict]], threshold: float = 0.8) -> list[int]:
    """For each conversation, the index of the first member of its near-duplicate group."""
    texts = [
        dedup.normalize_text(" ".join(m["content"] for m in messages if m["role"] != "system"))
        for messages in conversations
    ]
    return dedup.group_ids(len(texts), dedup.near_duplicates(texts, threshold))


def choose_eval_groups(groups: list[int], eval_frac: float, seed: int) -> set[int]:
    """Group ids for the eval side: whole groups, shuffled, until the eval side holds round(frac * n) examples."""
    sizes: dict[int, int] = {}
    for group in groups:
        sizes[group] = sizes.get(group, 0) + 1
    target = max(1, round(eval_frac * len(groups)))
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    chosen, count = set(), 0
    for group in order:
        if count >= target:
            break
        if count + sizes[group] <= target or not chosen:
            chosen.add(group)
            count += sizes[group]
    return chosen


def split_dataset(
    path: str | Path,
    out_dir: str | Path,
    *,
    eval_frac: float = 0.1,
    seed: int = 0,
    near_dup_threshold: float = 0.8,
    overwrite: bool = False,
) -> dict:
    """Write OUT_DIR/train.jsonl and OUT_DIR/eval.jsonl (lines verbatim, file order kept); return the counts."""
    if not 0.0 < eval_frac < 1.0:
        raise EdgeftError(f"--eval-frac {eval_frac}: must be between 0 and 1 (e.g. 0.1)")
    refuse_own_input(out_dir, {"input file": path})  # replacing the folder must not delete the input
    if overwrite:
        refuse_foreign_folder(out_dir, what="an edgeft data split", outputs=SPLIT_FILES,
                              advice="choose another -o or empty it yourself")
    records = scan_jsonl(path)
    bad = next((r for r in records if r.problems), None)
    if bad is not None:
        raise EdgeftError(
            f"{path}:{bad.line}: {bad.problems[0]}; clean the file first (edgeft data check {path} --fix CLEAN.jsonl)"
        )
    if len(records) < 2:
        raise EdgeftError(f"{path}: {len(records)} conversation(s); a split needs at least two")
    # Exact duplicates have Jaccard 1, so the near-duplicate grouping keeps them together too.
    groups = group_examples([r.messages for r in records], near_dup_threshold)
    eval_groups = choose_eval_groups(groups, eval_frac, seed)
    if len(eval_groups) == len(set(groups)):
        if len(eval_groups) == 1:
            raise EdgeftError(f"{path}: every example is a near-duplicate of every other; nothing left to train on")
        raise EdgeftError(f"{path}: --eval-frac {eval_frac} puts all {len(records)} conversations on the eval side; "
                          "nothing left to train on: lower --eval-frac")
    train_lines = [r.raw for r, g in zip(records, groups) if g not in eval_groups]
    eval_lines = [r.raw for r, g in zip(records, groups) if g in eval_groups]
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        (tmp / "train.jsonl").write_text("".join(line + "\n" for line in train_lines), encoding="utf-8")
        (tmp / "eval.jsonl").write_text("".join(line + "\n" for line in eval_lines), encoding="utf-8")
        summary = {
            "source": str(path), "seed": seed, "eval_frac": eval_frac, "near_dup_threshold": near_dup_threshold,
            "train": len(train_lines), "eval": len(eval_lines),
            "groups": len(set(groups)), "near_duplicates_kept_together": len(groups) - len(set(groups)),
        }
        (tmp / "split.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return {**summary, "train_path": str(out_dir / "train.jsonl"), "eval_path": str(out_dir / "eval.jsonl")}
