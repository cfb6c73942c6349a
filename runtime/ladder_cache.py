"""The base's ladder, answered once per (base GGUF, prompts, decoding settings) and reused.

The prompted base's answers do not depend on the fine-tune: they follow from the base GGUF's bytes, the rungs'
prompts (which hold the eval questions, the system prompt, the shots chosen or retrieved from the training data and
any retrieved passages) and the decoding settings (max_tokens, n_ctx, the timing sample). A release that changed only
a training setting, or a sweep's trials, would otherwise pay the whole ladder again (~90 s of the demo's release).

`reusing_base_ladder(cache_dir)` wraps `runtime.ladder.generate` for the ladder's call (label "ladder") while the
block runs: on a hit every rung's answers, prompt token counts and timings come from CACHE_DIR/KEY.json and the log
says so; on a miss the ladder generates as always and the entry is written (atomically). Scores are always computed
afresh from the answers, so the metric and the gold may change without a stale score. The fine-tune's generation is
never cached. Timings in a reused entry are those measured when it was written.

Example:
    with reusing_base_ladder(Path("out/ladder-cache")):
        run_eval("model.gguf", "eval.jsonl", "out/eval", baseline="base.gguf", ...)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Iterator

from convert.common.fsutil import atomic_file
from runtime import ladder

LADDER_LABEL = "ladder"
# Settings that change the base's answers or the timings reported with them (threads only change speed: the
# timings of a reused entry say how fast it was when measured).
KEY_SETTINGS = ("n_ctx", "max_tokens", "latency_samples")
FORMAT = 2  # 2: every answer is the lone request's (runtime.batching); entries of 1 were decoded side by side


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def ladder_key(path: Path, runs, settings: dict) -> str:
    """sha256 over the base GGUF's bytes, every rung's prompts and sources, and the answer-shaping settings."""
    digest = hashlib.sha256(f"edgeft ladder cache {FORMAT}\n{file_sha256(path)}\n".encode())
    digest.update(json.dumps({key: settings.get(key) for key in KEY_SETTINGS}, sort_keys=True).encode())
    for run in runs:
        digest.update(json.dumps([run.key, run.prompts, run.sources], sort_keys=True, default=str).encode())
    return digest.hexdigest()


def _load(entry: Path, runs) -> dict | None:
    """The stored generation for `runs`, filled into them; None when absent or not for these rungs."""
    try:
        stored = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = stored.get("runs", [])
    if [row.get("key") for row in rows] != [run.key for run in runs] or \
            any(len(row["answers"]) != len(run.prompts) for row, run in zip(rows, runs)):
        return None
    for row, run in zip(rows, runs):
        run.answers, run.prompt_tokens, run.latency = row["answers"], row["prompt_tokens"], row["latency"]
    return stored["result"]


def _store(entry: Path, runs, result: dict) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"key": run.key, "answers": run.answers, "prompt_tokens": run.prompt_tokens, "latency": run.latency}
            for run in runs]
    with atomic_file(entry) as tmp:
        tmp.write_text(json.dumps({"format": FORMAT, "runs": rows, "result": result}, default=str), encoding="utf-8")


@contextlib.contextmanager
def reusing_base_ladder(cache_dir: str | Path, log=None) -> Iterator[dict]:
    """While the block runs, the ladder's generation is served from / stored into `cache_dir`. Yields a record of
    what happened ({"reused": [keys], "stored": [keys]})."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    original = ladder.generate
    record: dict = {"reused": [], "stored": []}

    def generate(path, runs, **settings):
        if settings.get("label") != LADDER_LABEL or not runs:
            return original(path, runs, **settings)
        key = ladder_key(Path(path), runs, settings)
        entry = Path(cache_dir) / f"{key}.json"
        result = _load(entry, runs)
        if result is not None:
            record["reused"].append(key)
            log(f"ladder: reused the base's answers for {len(runs)} rung(s) from {entry} (same base GGUF, prompts "
                "and decoding settings; no rung re-run)")
            return result
        result = original(path, runs, **settings)
        _store(entry, runs, result)
        record["stored"].append(key)
        return result

    ladder.generate = generate
    try:
        yield record
    finally:
        ladder.generate = original
