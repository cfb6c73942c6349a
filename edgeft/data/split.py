"""`edgeft data split`: a train/eval split where near-duplicates never straddle the border.

A random line-level split of a dataset with paraphrased copies puts one copy in train and its twin in eval, and the
eval then measures memorisation. So examples are grouped first (exact and near-duplicates, the same MinHash
grouping `data check` uses) and whole groups are assigned to one side.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from edgeft.data import dedup
from convert.common.jsonl import scan_jsonl
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_dir, refuse_foreign_folder, refuse_own_input

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


# ---- the validation split: carved from the training data, scored by the metric, never trained on ---------------

# Below these the checkpoint scores and the trained model both mean little; said up front, before a model loads.
MIN_TRAIN_EXAMPLES = 8
MIN_VALIDATION_EXAMPLES = 2
MAX_VALIDATION_FRACTION = 0.5
DEFAULT_VALIDATION = 0.1  # what select: metric carves when the recipe names no validation split
VALIDATION_FILE, TRAINED_FILE = "validation.jsonl", "train-split.jsonl"


@dataclass
class Carved:
    """The training data cut in two: what trains and what scores checkpoints; `left_out` are validation examples
    that hold an eval example's text (line, why): scoring on them would select by the held-out eval after all."""

    train: list
    validation: list
    left_out: list[tuple[int, str]]
    source: str  # "0.1 of train.jsonl" or the validation file

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """OUT_DIR/train-split.jsonl and OUT_DIR/validation.jsonl (lines verbatim), the files training reads."""
        from convert.common.jsonl import write_jsonl_lines

        trained = write_jsonl_lines(Path(out_dir) / TRAINED_FILE, [r.raw for r in self.train])
        return trained, write_jsonl_lines(Path(out_dir) / VALIDATION_FILE, [r.raw for r in self.validation])


def _clean_records(path: Path, what: str) -> list:
    records = scan_jsonl(path)
    bad = next((r for r in records if r.problems), None)
    if bad is not None:
        raise EdgeftError(f"{path}:{bad.line}: {bad.problems[0]}; fix the {what} (edgeft data check {path})")
    return records


def _leaks(records: list, texts_of: list) -> list:
    """Contamination of `records` (as the training side) by the conversations `texts_of` (as the eval side)."""
    from edgeft.data import decontam

    turns = [[dedup.normalize_text(m["content"]) for m in r.messages if m["role"] != "system"] for r in records]
    return decontam.find_contamination(turns, decontam.eval_texts([r.messages for r in texts_of],
                                                                  dedup.normalize_text))


def carve_validation(data: str | Path, validation, *, eval_path: str | Path | None = None, seed: int = 0,
                     near_dup_threshold: float = 0.8, gold_problem=None) -> Carved:
    """Split `data` for metric selection: `validation` is a fraction of it (whole near-duplicate groups, as
    `split_dataset` cuts) or a JSONL file of its own. Validation examples that hold an eval example's text are left
    out (the held-out eval stays unseen by selection); a validation file that repeats training examples, or a cut
    that leaves too little to train on, is an EdgeftError before anything trains.

    With `gold_problem` (the metric's: last assistant turn -> why it cannot be scored, or None) a fraction is taken
    of the examples the metric can score only: the generic chats mixed in against forgetting always train."""
    data = Path(data)
    records = _clean_records(data, "training data")
    evals = _clean_records(Path(eval_path), "eval data") if eval_path is not None else []
    if isinstance(validation, str):
        chosen, train, source = _clean_records(Path(validation), "validation file"), records, validation
        repeated = _leaks(train, chosen)
        if repeated:
            hit = repeated[0]
            raise EdgeftError(f"{validation}:{chosen[hit.eval_index].line}: its {hit.what} is in the training data "
                              f"({data}:{train[hit.train_index].line}, {hit.how}); a validation example must be "
                              "unseen: remove it from one of the two files")
    else:
        chosen, train = _cut(records, float(validation), seed, near_dup_threshold, gold_problem)
        source = f"{validation} of {data}" + (" (of the examples the metric can score)" if gold_problem else "")
    leaked = {hit.train_index: hit for hit in _leaks(chosen, evals)} if evals else {}
    left_out = [(chosen[i].line, f"holds the {hit.what} of {eval_path}:{evals[hit.eval_index].line}")
                for i, hit in sorted(leaked.items())]
    kept = [r for i, r in enumerate(chosen) if i not in leaked]
    _refuse_thin(data, source, len(train), len(kept), len(records))
    return Carved(train, kept, left_out, source)


def _cut(records: list, fraction: float, seed: int, threshold: float, gold_problem) -> tuple[list, list]:
    """(validation, train): whole near-duplicate groups, chosen among the groups the metric can score in full."""
    groups = group_examples([r.messages for r in records], threshold)
    unscoreable = {g for r, g in zip(records, groups) if gold_problem is not None and (
        r.messages[-1]["role"] != "assistant" or gold_problem(r.messages[-1]["content"]))}
    eligible = [g for g in groups if g not in unscoreable]
    picked = choose_eval_groups(eligible, fraction, seed) if eligible else set()
    return [r for r, g in zip(records, groups) if g in picked], [r for r, g in zip(records, groups) if g not in picked]


def _refuse_thin(data: Path, source: str, n_train: int, n_validation: int, n_all: int) -> None:
    if n_validation < MIN_VALIDATION_EXAMPLES:
        raise EdgeftError(f"validation: {source} gives {n_validation} validation example(s) (after leaving out "
                          "those that repeat the eval set or whose gold the metric cannot score); checkpoints need "
                          f"at least {MIN_VALIDATION_EXAMPLES} to be scored: raise the fraction, pass a larger file "
                          "or choose a metric that scores this data")
    if n_train < max(MIN_TRAIN_EXAMPLES, n_validation):
        raise EdgeftError(f"validation: {source} leaves {n_train} of {n_all} examples in {data} to train on (at "
                          f"least {MIN_TRAIN_EXAMPLES}, and no fewer than the {n_validation} validation examples); "
                          "lower the fraction or add training data")
