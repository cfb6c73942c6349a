"""Release/demo figures for `make bench`: demo data generation time, the demo base's pretraining speed (projected
to the full recipe), and — when `make release` has published the demo — its headline numbers from the manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

RELEASE = Path("release/edgeft-demo/manifest.json")


def _row(bench, metric, value, unit, target=None, ok=None) -> dict:
    return {"bench": bench, "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def _pretrain_seconds_per_step(steps: int = 8) -> float:
    """Time a few optimizer steps of the real demo recipe (same model, batch and threads), after one warm-up."""
    import torch

    from edgeft.demo import base_lm

    recipe = base_lm.RECIPE
    torch.set_num_threads(recipe["threads"])
    texts = base_lm.build_corpus(dict(recipe, corpus_chars=300_000))
    tokenizer = base_lm.train_tokenizer(texts, recipe["vocab_size"])
    timed = dict(recipe, steps=steps + 1, warmup=1, corpus_chars=300_000)
    start = []
    base_lm.pretrain(timed, tokenizer, texts, log=lambda line: start.append(time.perf_counter()))
    # log fires at step 1 and at the last step: the interval covers `steps` steps after the first
    return (start[-1] - start[0]) / steps


def run(cache_dir: Path) -> list[dict]:
    from edgeft.demo.base_lm import RECIPE
    from edgeft.demo.sql_task import write_task

    rows = []
    started = time.perf_counter()
    write_task(Path(cache_dir) / "demo-data")
    rows.append(_row("demo", "data generation (2,000 SQL + 600 chats, 200 eval, SQLite)", time.perf_counter() - started, "s"))
    per_step = _pretrain_seconds_per_step()
    projected = per_step * RECIPE["steps"]
    rows.append(_row("demo", "base pretraining, projected full recipe", projected, "s", "<= 300", projected <= 300))
    if RELEASE.is_file():
        metrics = json.loads(RELEASE.read_text())["metrics"]
        task = metrics["task"]
        gain = 100 * (task["finetune"] - task["baseline"])
        rows += [
            _row("release", "sql-exec fine-tune", 100 * task["finetune"], "%"),
            _row("release", "sql-exec prompted base", 100 * task["baseline"], "%"),
            _row("release", "sql-exec gain", gain, "points", ">= 20", gain >= 20),
            _row("release", "Q4_K_M vs F16 mean KLD", metrics["quantization"]["kld"], "nats"),
            _row("release", "forgetting probe ppl ratio", metrics["forgetting"]["ratio"], "x"),
            _row("release", "tg fine-tune", metrics["throughput"]["finetune"]["tg"], "tok/s"),
            _row("release", "tg base", metrics["throughput"]["base"]["tg"], "tok/s"),
        ]
    return rows
