"""The demo's sweep for `make bench`: lr in {1e-4, 3e-4, 1e-3} x epochs in {1, 2} on the demo's base and data, each
trial selected and scored by sql-exec on a 0.1 validation split (edgeft sweep); rows: each trial's validation score
and training time, the winner, the sweep's wall time. The hand-tuned recipe (lr 1e-3, one epoch) is one of the
trials, so "at least as good as the hand-tuned recipe" reads off the table.

About 40 minutes on a 2-core CPU, so it runs only with EDGEFT_BENCH_SWEEP=1 (`EDGEFT_BENCH_SWEEP=1 python -m
tests.bench --only sweep`); it resumes where a kill left it and, once finished, only reads its sweep.json.
Its table and plot: CACHE/demo-sweep/sweep.md and sweep.png.

Without EDGEFT_BENCH_SWEEP, when `make release RECIPE=edgeft/demo/sweep.yaml` has run (the same grid, as a release),
its sweep is read instead, with the held-out eval's score of the winner it shipped against the hand-tuned demo
release's (`make release`), when both ran: the acceptance's "at least as good on the held-out eval".
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SWEEP_RELEASE = ROOT / "out" / "edgeft-demo-sweep"  # make release RECIPE=edgeft/demo/sweep.yaml
HAND_TUNED_RELEASE = ROOT / "out" / "edgeft-demo"  # make release
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
    rows = []
    if wall is None and not record_path.is_file() and (SWEEP_RELEASE / "sweep" / "sweep.json").is_file():
        record_path = SWEEP_RELEASE / "sweep" / "sweep.json"
        rows = _held_out_rows()
    if not record_path.is_file():
        return [_row("demo sweep not run (EDGEFT_BENCH_SWEEP=1, ~40 min)", 0.0, "")]
    record = json.loads(record_path.read_text())
    rows = [_row(f"trial {t['name']}: validation sql-exec", 100 * t["score"], "%") for t in record["trials"]
            if "score" in t] + rows
    rows += [_row(f"trial {t['name']}: training", t["train_seconds"], "s") for t in record["trials"] if "score" in t]
    scores = {t["name"]: t["score"] for t in record["trials"] if "score" in t}
    if record["winner"] and HAND_TUNED in scores:
        best = scores[record["winner"]]
        rows.append(_row(f"winner {record['winner']} vs hand-tuned {HAND_TUNED}", 100 * (best - scores[HAND_TUNED]),
                         "points", ">= 0", best >= scores[HAND_TUNED]))
    if wall is not None:
        rows.append(_row("sweep wall time (this run; finished trials skipped)", wall, "s"))
    else:
        rows.append(_row(f"sweep training time (sum over the trials of {record_path.parent})",
                         sum(t.get("train_seconds", 0.0) for t in record["trials"]), "s"))
    return rows


def _held_out_rows() -> list[dict]:
    """The held-out eval's score of the sweep release's shipped winner against the hand-tuned release's."""
    scores, rows = {}, []
    for name, folder in (("sweep winner", SWEEP_RELEASE), ("hand-tuned", HAND_TUNED_RELEASE)):
        report = folder / "eval" / "report.json"
        if report.is_file():
            scores[name] = json.loads(report.read_text())["scores"]["model"]["mean"]
            rows.append(_row(f"{name}: held-out sql-exec ({folder.name})", 100 * scores[name], "%"))
    if len(scores) == 2:
        gain = 100 * (scores["sweep winner"] - scores["hand-tuned"])
        rows.append(_row("held-out: sweep winner - hand-tuned", gain, "points", ">= 0", gain >= 0))
    return rows
