"""The demo's sweep for `make bench`: lr in {1e-4, 3e-4, 1e-3} x epochs in {1, 2} on the demo's base and data, each
trial selected and scored by sql-exec on a 0.1 validation split (edgeft sweep); rows: each trial's validation score
and training time, the winner, the sweep's wall time. The hand-tuned recipe (lr 1e-3, one epoch) is one of the
trials, so "at least as good as the hand-tuned recipe" reads off the table.

About 40 minutes on a 2-core CPU, so it runs only with EDGEFT_BENCH_SWEEP=1 (`EDGEFT_BENCH_SWEEP=1 python -m
tests.bench --only sweep`); it resumes where a kill left it and, once finished, only reads its sweep.json.
Its table and plot: CACHE/demo-sweep/sweep.md and sweep.png.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
GRID = {"lr": [1.0e-4, 3.0e-4, 1.0e-3], "epochs": [1, 2]}
HAND_TUNED = "lr=0.001_epochs=1"


def _row(metric, value, unit, target=None, ok=None) -> dict:
    return {"bench": "sweep", "metric": metric, "value": value, "unit": unit, "target": target, "ok": ok}


def _run_sweep(out: Path) -> float:
    from edgeft.demo import build_demo
    from edgeft.release.settings import load_release_recipe
    from edgeft.sweep import run_sweep

    paths = build_demo(ROOT / ".cache" / "demo")
    recipe = load_release_recipe(ROOT / "edgeft" / "demo" / "recipe.yaml", demo=True)
    train = {k: v for k, v in recipe["train"].items() if k not in GRID}
    metric = recipe["eval"]["metric"].format(data_dir=paths["train"].parent)
    started = time.perf_counter()
    run_sweep(paths["base"], paths["train"], out, grid=GRID, metric=metric, eval_path=paths["eval"],
              config=dict(train, validation=0.1, keep="best"), grid_source="bench sweep grid")
    return time.perf_counter() - started


def run(cache_dir: Path) -> list[dict]:
    out = Path(cache_dir) / "demo-sweep"
    record_path = out / "sweep.json"
    wall = None
    if os.environ.get("EDGEFT_BENCH_SWEEP") == "1":
        wall = _run_sweep(out)
    if not record_path.is_file():
        return [_row("demo sweep not run (EDGEFT_BENCH_SWEEP=1, ~40 min)", 0.0, "")]
    record = json.loads(record_path.read_text())
    rows = [_row(f"trial {t['name']}: validation sql-exec", 100 * t["score"], "%") for t in record["trials"]
            if "score" in t]
    rows += [_row(f"trial {t['name']}: training", t["train_seconds"], "s") for t in record["trials"] if "score" in t]
    scores = {t["name"]: t["score"] for t in record["trials"] if "score" in t}
    if record["winner"] and HAND_TUNED in scores:
        best = scores[record["winner"]]
        rows.append(_row(f"winner {record['winner']} vs hand-tuned {HAND_TUNED}", 100 * (best - scores[HAND_TUNED]),
                         "points", ">= 0", best >= scores[HAND_TUNED]))
    if wall is not None:
        rows.append(_row("sweep wall time (this run; finished trials skipped)", wall, "s"))
    return rows
