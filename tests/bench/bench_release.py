"""Release/demo figures for `make bench`: demo data generation time, the demo base's pretraining speed (projected
to the full recipe), and — when `make release` has published the demo — its headline numbers from the manifest."""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RELEASE = ROOT / "release" / "edgeft-demo" / "manifest.json"


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
    rows += _imatrix_kld_rows(Path(cache_dir))
    return rows


def _imatrix_kld_rows(cache_dir: Path) -> list[dict]:
    """Issue 4 on a real (if small) LM: the demo base at Q4_K_M with an imatrix from the training data must sit closer
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
