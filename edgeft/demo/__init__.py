"""The built-in demo: a synthetic NL->SQL task and a small, genuinely pretrained base LM that does not know it.

`sql_task` writes train/eval conversations and the SQLite file `sql-exec` runs them on; `base_lm` pretrains the
base once on text every Python install has and caches it. Both are deterministic.
"""

from pathlib import Path


def build_demo(out_dir: Path = Path(".cache/demo"), *, log=print) -> dict[str, Path]:
    """Data (seconds) into OUT_DIR/data and the pretrained base (minutes, once; cached) into OUT_DIR/base."""
    from edgeft.demo.base_lm import build_base_model
    from edgeft.demo.sql_task import write_task

    out_dir = Path(out_dir)
    data = out_dir / "data"
    paths = {"train": data / "train.jsonl", "eval": data / "eval.jsonl", "db": data / "shop.sqlite",
             "schema": data / "schema.sql"}
    if not all(path.is_file() for path in paths.values()):  # each is written atomically; a kill leaves some
        paths = dict(write_task(data))
    paths["base"] = build_base_model(out_dir / "base", log=log)
    return paths
