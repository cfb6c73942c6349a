"""Quant sweep benchmark: `edgeft eval MODEL-F16.gguf --quants auto` on the demo, as the release's `quant: auto`
runs it — the wall time of the whole sweep, each type's quantize / eval / speed seconds, and the type it ships.

Input: the demo release's own F16 and imatrix when `make release` has run (out/edgeft-demo/), else the demo base
(.cache/demo/base, a real pretrained 135M LM) converted to F16, with the imatrix of the demo's training data; the
demo's 200 held-out questions, sql-exec, 64 new tokens, as the demo recipe's eval.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edgeft.release.stages import env_threads

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO = ROOT / ".cache" / "demo"
RELEASED = ROOT / "out" / "edgeft-demo"
# llama.cpp threads; EDGEFT_THREADS=1 when another job shares a 2-core box (ggml's waiting threads spin).
THREADS = env_threads("EDGEFT_THREADS") or 2


def _row(metric: str, value, unit: str) -> dict:
    return {"bench": "quant_sweep", "metric": metric, "value": value, "unit": unit, "target": None, "ok": None}


def _inputs(work: Path) -> tuple[Path, Path, str]:
    """(F16 GGUF, imatrix, which model) — the release's own when it ran, else made from the demo base."""
    if (RELEASED / "model-F16.gguf").is_file() and (RELEASED / "imatrix.gguf").is_file():
        return RELEASED / "model-F16.gguf", RELEASED / "imatrix.gguf", "the demo release's fine-tune"
    from convert import convert_model

    f16, imatrix = work / "demo-base-F16.gguf", work / "demo-base-imatrix.gguf"
    if not f16.is_file():
        convert_model(DEMO / "base", f16, outtype="f16")
    if not imatrix.is_file():
        # In its own process, as the release's imatrix stage: torch loaded here would bring its own OpenMP runtime
        # into the sweep's llama.cpp calls (measured: ggml's threads then waited in torch's libgomp barrier).
        subprocess.run([sys.executable, "-m", "edgeft", "imatrix", str(DEMO / "base"), "--data",
                        str(DEMO / "data" / "train.jsonl"), "-o", str(imatrix), "--max-examples", "256",
                        "--threads", str(THREADS)], check=True, cwd=ROOT)
    return f16, imatrix, "the demo base"


def sweep(work: Path, *, quants: str = "auto", limit: int | None = None) -> list[dict]:
    from runtime.eval_settings import EvalSettings
    from runtime.quant_sweep import run_sweep

    if not (DEMO / "base" / "config.json").is_file() or not (DEMO / "data" / "eval.jsonl").is_file():
        return [_row("demo base or data missing (make release builds them): no sweep rows", 0, "")]
    work.mkdir(parents=True, exist_ok=True)
    f16, imatrix, which = _inputs(work)
    settings = EvalSettings(metric=f"sql-exec:{DEMO / 'data' / 'shop.sqlite'}", max_tokens=64, threads=THREADS,
                            limit=limit)
    started = time.perf_counter()
    report = run_sweep(f16, DEMO / "data" / "eval.jsonl", work / "quants", settings, quants=quants, imatrix=imatrix)
    seconds = time.perf_counter() - started
    (work / "quants-summary.json").write_text(json.dumps({key: report[key] for key in ("type", "reason", "seconds")}))
    n = report["rows"][0]["score"]["n"]
    rows = [_row(f"sweep of {which}: {len(report['rows'])} types x {n} questions", seconds, "s")]
    for row in report["rows"]:
        for stage, value in row["seconds"].items():
            rows.append(_row(f"{row['type']} {stage}", value, "s"))
        rows.append(_row(f"{row['type']} sql-exec", row["score"]["mean"] * 100, "%"))
    rows.append(_row(f"ships {report['reason']}", report["type"], ""))
    return rows


def run(cache: Path) -> list[dict]:
    return sweep(cache / "quant_sweep")
