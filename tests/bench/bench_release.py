"""Release/demo figures for `make bench`: demo data generation and base import times, and — when `make release`
has published the demo — its headline numbers from the manifest and its eval throughput from the report."""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RELEASE = ROOT / "release" / "edgeft-demo" / "manifest.json"
REPORT = ROOT / "out" / "edgeft-demo" / "eval" / "report.json"


def _row(bench, metric, value, unit, target=None, ok=None) -> dict:
    return {"bench": bench, "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def _published_rows() -> list[dict]:
    metrics = json.loads(RELEASE.read_text())["metrics"]
    task = metrics["task"]
    gain = 100 * (task["finetune"] - task["baseline"])
    rows = [
        _row("release", "sql-exec fine-tune", 100 * task["finetune"], "%"),
        _row("release", f"sql-exec strongest rung ({task.get('baseline_setup', 'prompted base')})",
             100 * task["baseline"], "%"),
        _row("release", "sql-exec gain over the strongest rung", gain, "points", ">= 15", gain >= 15),
        _row("release", "Q4_K_M vs F16 mean KLD", metrics["quantization"]["kld"], "nats"),
        _row("release", "forgetting probe ppl ratio", metrics["forgetting"]["ratio"], "x"),
        _row("release", "tg fine-tune", metrics["throughput"]["finetune"]["tg"], "tok/s"),
        _row("release", "tg base", metrics["throughput"]["base"]["tg"], "tok/s"),
    ]
    for rung in (metrics.get("ladder") or {}).get("rows", []):
        if rung.get("score") is not None:
            rows.append(_row("release", f"sql-exec {rung['rung']}", 100 * rung["score"], "%"))
    return rows


def _eval_throughput_rows() -> list[dict]:
    """How long the demo's eval took per question: the fine-tune alone, and the whole ladder of the base."""
    report = json.loads(REPORT.read_text())
    ladder = report.get("ladder") or {}
    wall, n = ladder.get("wall_s") or {}, report.get("n") or 0
    rows = []
    if n and wall.get("finetune"):
        rows.append(_row("eval", "demo eval: fine-tune, per question", 1000 * wall["finetune"] / n, "ms"))
    if n and wall.get("ladder"):
        rungs = len(ladder.get("rungs") or []) or 1
        rows.append(_row("eval", f"demo eval: ladder ({rungs} rungs), per question", 1000 * wall["ladder"] / n, "ms"))
    finetune = ladder.get("finetune") or {}
    if finetune.get("total_ms"):
        rows.append(_row("eval", "demo fine-tune: one request alone, total", finetune["total_ms"], "ms"))
    return rows


def run(cache_dir: Path) -> list[dict]:
    from edgeft.demo.smollm2 import import_demo_base
    from edgeft.demo.sql_task import N_EVAL, N_GENERAL, N_TRAIN, write_task

    rows = []
    started = time.perf_counter()
    write_task(Path(cache_dir) / "demo-data")
    rows.append(_row("demo", f"data generation ({N_TRAIN:,} SQL + {N_GENERAL} chats, {N_EVAL} eval, SQLite)",
                     time.perf_counter() - started, "s"))
    started = time.perf_counter()
    import_demo_base(Path(cache_dir) / "demo-base", force=True, log=lambda _: None)
    rows.append(_row("demo", "base import (SmolLM2-135M-Instruct GGUF -> f32 HF folder)",
                     time.perf_counter() - started, "s"))
    if RELEASE.is_file():
        rows += _published_rows()
    if REPORT.is_file():
        rows += _eval_throughput_rows()
    rows += _imatrix_kld_rows(Path(cache_dir))
    return rows


def _imatrix_kld_rows(cache_dir: Path) -> list[dict]:
    """The imatrix on a real (if small) LM: the demo base at Q4_K_M with an imatrix from the training data must sit closer
    to its F16 than without one, measured on held-out text (the eval conversations and the general probe)."""
    from convert import convert_model
    from edgeft.imatrix import compute_imatrix
    from runtime.kld import compare

    base = ROOT / ".cache" / "demo" / "base"
    data = ROOT / ".cache" / "demo" / "data"
    if not (base / "config.json").is_file() or not (data / "eval.jsonl").is_file():
        return [_row("imatrix", "demo base not built (run make release first)", 0, "", None, None)]
    work = cache_dir / "imatrix-kld"
    work.mkdir(parents=True, exist_ok=True)
    imatrix = compute_imatrix(base, data / "train.jsonl", work / "imatrix.gguf", max_examples=400)
    f16 = convert_model(base, work / "f16.gguf", outtype="f16")
    plain = convert_model(base, work / "q4_k_m.gguf", outtype="q4_k_m")
    guided = convert_model(base, work / "q4_k_m-imatrix.gguf", outtype="q4_k_m", imatrix=imatrix)
    texts = []
    for line in (data / "eval.jsonl").read_text(encoding="utf-8").splitlines():
        messages = json.loads(line)["messages"]
        texts.append(messages[-2]["content"] + "\n" + messages[-1]["content"])
    texts.append((ROOT / "runtime" / "data" / "general.txt").read_text(encoding="utf-8"))
    without = compare(plain, f16, texts, threads=1)["kld_mean"]
    with_imatrix = compare(guided, f16, texts, threads=1)["kld_mean"]
    return [
        _row("imatrix", "demo base Q4_K_M KLD vs F16, without imatrix", without, "nats"),
        _row("imatrix", "demo base Q4_K_M KLD vs F16, with imatrix", with_imatrix, "nats", "< without",
             with_imatrix < without),
    ]
