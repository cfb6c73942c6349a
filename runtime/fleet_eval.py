"""`edgeft eval BASE.gguf --adapter NAME=A.gguf ...`: score a fleet of task adapters over one load of the base.

The adapters are switched on one context exactly as `edgeft serve` switches them (runtime.serve.engine), so what
is scored here is what the server answers. The base answers too, prompted zero-shot with --system, and each adapter
is compared with it (paired bootstrap over the same questions). The single-model report (ladder, forgetting probe,
KLD, speed, gates) stays `edgeft eval MODEL.gguf`'s; this one writes report.json, report.md, predictions.jsonl.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_dir
from runtime.examples import baseline_prompt, read_examples
from runtime.metrics import Judge, parse_metric, refuse_unscoreable
from runtime.serve.engine import Delta, Done, Engine, Sampling
from runtime.stats import mean_interval, paired_difference


def _answers(engine: Engine, name: str, prompts: list[list[dict]], *, max_tokens: int) -> list[dict]:
    rows = []
    for prompt in prompts:
        parts, done = [], None
        for event in engine.generate(name, engine.chat_tokens(name, prompt), Sampling(max_tokens=max_tokens)):
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Done):
                done = event
        rows.append({"answer": "".join(parts), "prompt_tokens": done.prompt_tokens,
                     "completion_tokens": done.completion_tokens})
    return rows


def run_fleet_eval(base: str | os.PathLike, adapters: dict[str, str | os.PathLike], data: str | os.PathLike,
                   out_dir: str | os.PathLike, *, metric: str = "exact", rubric: str | os.PathLike | None = None,
                   system: str | None = None, max_tokens: int = 256, n_ctx: int = 4096, threads: int | None = None,
                   limit: int | None = None) -> dict:
    """Answer every example of `data` with the base and with each adapter (one base load), score with `metric`.

    Example: `run_fleet_eval("base.gguf", {"sql": "sql.gguf", "faq": "faq.gguf"}, "eval.jsonl", "out/fleet")`.
    """
    if not adapters:
        raise EdgeftError("--adapter: give at least one NAME=ADAPTER.gguf to evaluate over the base")
    for option, value in (("--max-tokens", max_tokens), ("--ctx", n_ctx), ("--threads", threads)):
        if value is not None and value < 1:
            raise EdgeftError(f"{option} {value}: must be at least 1")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "report.json").is_file():
        raise EdgeftError(f"-o {out_dir}: folder is not empty and holds no earlier report.json; choose another -o")
    examples = read_examples(data, limit=limit)
    scorer = parse_metric(metric, rubric_path=str(rubric) if rubric else None, threads=threads)
    refuse_unscoreable(scorer, examples, data, metric)
    engine = Engine(base, adapters, base_name="base" if "base" not in adapters else Path(base).stem, n_ctx=n_ctx,
                    threads=threads)
    try:
        prompts = {engine.base_name: [baseline_prompt(e, system=system, shots=[]) for e in examples]}
        prompts.update({name: [e.prompt for e in examples] for name in adapters})
        for name, model_prompts in prompts.items():  # every prompt must fit before any generation starts
            for example, prompt in zip(examples, model_prompts):
                n_tokens = len(engine.chat_tokens(name, prompt))
                if n_tokens >= n_ctx:
                    raise EdgeftError(f"{data}:{example.line}: the prompt for {name} is {n_tokens} tokens, which "
                                      f"leaves no room for an answer in --ctx {n_ctx}; raise --ctx or shorten it")
        answers = {name: _answers(engine, name, model_prompts, max_tokens=max_tokens)
                   for name, model_prompts in prompts.items()}
    finally:
        engine.close()
    scores = {name: [scorer.score(row["answer"], e.gold, e.question) for row, e in zip(rows, examples)]
              for name, rows in answers.items()}
    if isinstance(scorer, Judge):
        scorer.close()
    base_name = next(iter(prompts))
    base_scores = [verdict.score for verdict in scores[base_name]]
    models = []
    for name in prompts:
        values = [verdict.score for verdict in scores[name]]
        models.append({"model": name, "file": str(base if name == base_name else adapters[name]),
                       "score": mean_interval(values),
                       "difference_vs_base": None if name == base_name else paired_difference(values, base_scores)})
    report = {"base": str(base), "data": str(data), "metric": metric, "n": len(examples),
              "settings": {"max_tokens": max_tokens, "n_ctx": n_ctx, "threads": threads, "system": system,
                           "decoding": "greedy"},
              "models": models}
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
        (tmp / "report.md").write_text(_markdown(report))
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as handle:
            for index, example in enumerate(examples):
                row = {"line": example.line, "question": example.question, "gold": example.gold}
                for name in prompts:
                    row[name] = {**answers[name][index], "score": scores[name][index].score,
                                 "note": scores[name][index].note}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    report["outputs"] = {name: str(out_dir / name) for name in ("report.json", "report.md", "predictions.jsonl")}
    return report


def _markdown(report: dict) -> str:
    lines = [f"# Adapters over {report['base']}", "",
             f"{report['n']} examples from {report['data']}, metric `{report['metric']}`, greedy; the base is "
             "prompted zero-shot with the system prompt, each adapter with the example's own turns.", "",
             "| model | score | 95% interval | vs base (points) |", "|---|---:|---:|---:|"]
    for row in report["models"]:
        score, diff = row["score"], row["difference_vs_base"]
        versus = "—" if diff is None else (f"{diff['mean'] * 100:+.1f} [{diff['low'] * 100:+.1f}, "
                                          f"{diff['high'] * 100:+.1f}]")
        lines.append(f"| {row['model']} | {score['mean'] * 100:.1f}% | [{score['low'] * 100:.1f}, "
                     f"{score['high'] * 100:.1f}] | {versus} |")
    return "\n".join(lines) + "\n"
