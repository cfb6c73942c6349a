"""Ladder benchmark (issue 17): wall time of the whole baseline ladder against the fixed k-shot rung alone, on the
demo eval with the demo recipe's system prompt, shots and max_tokens (target: <= 2x), and each rung one after
another for comparison; the score and cost per request of every rung.

The base is the demo's pretrained base at Q4_K_M when `make release` (or `edgeft demo base`) has built it, else the
fixture factory's random llama (then the scores mean nothing, the times still do). Times include building the
prompts (retrieval) and the per-request timing pass, as `edgeft eval` runs them.

Why the ratio can stay above 2 on a small base: the fixed rung alone evaluates only each question (its system prompt
and shots stay in the KV cache), while the retrieved rung's shots differ per question and must be evaluated (about
half of them, after ordering the questions by what they retrieve). On a base this small a decode step is compute-
bound, so decoding the rungs side by side saves little; the remaining cost is those prompt tokens.

`run(cache_dir)` returns rows for the runner (`make bench`)."""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO_BASE = ROOT / ".cache" / "demo" / "base"
THREADS = 1  # as bench_runtime: a second llama.cpp thread on a shared 2-core box measures the neighbours
N_CTX = 1024


def _row(metric, value, unit, target=None, ok=None) -> dict:
    return {"bench": "ladder", "metric": metric, "value": float(value), "unit": unit, "target": target, "ok": ok}


def _base_gguf(work: Path) -> tuple[Path, str]:
    from convert import convert_model

    if (DEMO_BASE / "config.json").is_file():
        out = work / "demo-base-Q4_K_M.gguf"
        if not out.is_file() or out.stat().st_mtime < (DEMO_BASE / "config.json").stat().st_mtime:
            convert_model(DEMO_BASE, out, outtype="q4_k_m")
        return out, "demo base Q4_K_M"
    from tests.factory import build_model

    out = work / "fixture-llama-Q4_K_M.gguf"
    if not out.is_file():
        convert_model(build_model("llama", aligned=True), out, outtype="q4_k_m")
    return out, "random fixture llama Q4_K_M (demo base not built)"


def _timed(base: Path, rungs, examples, settings: dict):
    from runtime import ladder

    started = time.perf_counter()
    runs = ladder.prepare(rungs, examples)
    ladder.generate(base, runs, **settings)
    return time.perf_counter() - started, runs


def run(cache_dir: Path) -> list[dict]:
    import yaml

    from edgeft.demo.sql_task import write_task
    from runtime import ladder
    from runtime.examples import read_examples
    from runtime.metrics import parse_metric

    work = Path(cache_dir) / "bench_ladder"
    work.mkdir(parents=True, exist_ok=True)
    data = Path(cache_dir) / "demo-data"
    if not (data / "eval.jsonl").is_file():
        write_task(data)
    recipe = yaml.safe_load((ROOT / "edgeft" / "demo" / "recipe.yaml").read_text())["eval"]
    base, what = _base_gguf(work)
    examples = read_examples(data / "eval.jsonl")
    shots = int(recipe["shots"])
    rungs = ladder.build_rungs(examples, system=recipe["system"], shots=shots, shots_from=data / "train.jsonl")
    settings = {"n_ctx": N_CTX, "threads": THREADS, "max_tokens": int(recipe["max_tokens"]), "latency_samples": 16}

    fixed = next(r for r in rungs if r.key.startswith("fixed-"))
    fixed_s, _ = _timed(base, [fixed], examples, settings)
    alone = {rung.key: (fixed_s if rung is fixed else _timed(base, [rung], examples, settings)[0]) for rung in rungs}
    ladder_s, runs = _timed(base, rungs, examples, settings)
    ratio = ladder_s / fixed_s
    fixed_run = next(run for run in runs if run.key == fixed.key)
    cold = ladder.cost(fixed_run)["total_ms"] * len(examples) / 1000
    rows = [
        _row(f"whole ladder ({len(rungs)} rungs, {len(examples)} ex, {what})", ladder_s, "s"),
        _row(f"fixed {shots}-shot rung alone", fixed_s, "s"),
        _row("ladder / fixed rung alone", ratio, "x", "<= 2", ratio <= 2.0),
        _row("rungs one after another (sum of each alone)", sum(alone.values()), "s"),
        _row("fixed rung without its prefix cache (median cold request x n)", cold, "s"),
        _row("ladder / fixed rung without its prefix cache", ladder_s / cold, "x"),
    ]
    evaluated = {run.key: sum(run.prompt_tokens) for run in runs}
    rows.append(_row("prompt tokens of the ladder (all rungs, before the cache)", sum(evaluated.values()), "tok"))
    scorer = parse_metric(recipe["metric"].format(data_dir=data))
    ladder.score(runs, examples, scorer)
    for run in runs:
        cost = ladder.cost(run)
        rows += [_row(f"{run.label}: sql-exec", 100 * sum(run.scores) / len(run.scores), "%"),
                 _row(f"{run.label}: prompt tokens/request", cost["prompt_tokens"], "tok"),
                 _row(f"{run.label}: time to first token", cost["ttft_ms"], "ms"),
                 _row(f"{run.label}: total per request", cost["total_ms"], "ms")]
    return rows
