"""`edgeft eval BASE.gguf --adapter NAME=A.gguf ...`: score a fleet of task adapters over one load of the base.

The adapters are chosen per decode call on one context exactly as `edgeft serve` chooses them
(runtime.serve.engine), each answer decoded alone, so what is scored here is what the server answers. The base answers too, prompted zero-shot with --system, and each adapter
is compared with it (paired bootstrap over the same questions). The single-model report (ladder, forgetting probe,
KLD, speed, gates) stays `edgeft eval MODEL.gguf`'s; this one writes report.json, report.md, predictions.jsonl.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from convert.common.fsutil import atomic_dir
from runtime.eval_settings import EvalSettings, SettingError, refuse_foreign_out_dir, refuse_long_prompts
from runtime.examples import baseline_prompt, read_examples
from runtime.metrics import Judge, parse_metric, refuse_unscoreable
from runtime.report import EVAL_FILES, FLEET_FILES
from runtime.serve.engine import Engine, Sampling
from runtime.stats import mean_interval, paired_difference, shown_interval


def _answers(engine: Engine, name: str, prompts: list[list[dict]], *, max_tokens: int) -> list[dict]:
    """Each prompt decoded alone from an empty slot (runtime.decode, plain): what the server answers one request."""
    from runtime.generate import generation

    rows = []
    for prompt in prompts:
        request = engine.request(name, engine.chat_tokens(name, prompt), Sampling(max_tokens=max_tokens))
        answer = generation(engine.decoder, engine.decoder.run([request], plain=True)[0])
        rows.append({"answer": answer.text, "prompt_tokens": answer.n_prompt, "completion_tokens": answer.n_generated})
    return rows


def _prompts(engine: Engine, examples, adapters, settings: EvalSettings, data) -> dict[str, list[list[dict]]]:
    """Each model's prompts, the base's first; every one must fit before any generation starts."""
    prompts = {engine.base_name: [baseline_prompt(e, system=settings.system, shots=[]) for e in examples]}
    prompts.update({name: [e.prompt for e in examples] for name in adapters})
    for name, model_prompts in prompts.items():
        too_long = [(example.line, n_tokens) for example, prompt in zip(examples, model_prompts)
                    if (n_tokens := len(engine.chat_tokens(name, prompt))) >= settings.n_ctx]
        refuse_long_prompts(data, too_long, len(model_prompts), n_ctx=settings.n_ctx, label=name)
    return prompts


def _models_section(base, adapters, base_name: str, scores: dict) -> list[dict]:
    base_scores = [verdict.score for verdict in scores[base_name]]
    models = []
    for name, verdicts in scores.items():
        values = [verdict.score for verdict in verdicts]
        models.append({"model": name, "file": str(base if name == base_name else adapters[name]),
                       "score": mean_interval(values),
                       "difference_vs_base": None if name == base_name else paired_difference(values, base_scores)})
    return models


def _write(out_dir: Path, report: dict, examples, answers: dict, scores: dict) -> None:
    with atomic_dir(out_dir, overwrite=True) as tmp:
        (tmp / EVAL_FILES["report"]).write_text(json.dumps(report, indent=2, ensure_ascii=False))
        (tmp / EVAL_FILES["markdown"]).write_text(_markdown(report))
        with open(tmp / EVAL_FILES["predictions"], "w", encoding="utf-8") as handle:
            for index, example in enumerate(examples):
                row = {"line": example.line, "question": example.question, "gold": example.gold}
                for name in answers:
                    row[name] = {**answers[name][index], "score": scores[name][index].score,
                                 "note": scores[name][index].note}
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_fleet_eval(base: str | os.PathLike, adapters: dict[str, str | os.PathLike], data: str | os.PathLike,
                   out_dir: str | os.PathLike, settings: EvalSettings | None = None, **options) -> dict:
    """Answer every example of `data` with the base and with each adapter (one base load), score with the metric.
    Of the settings, the fleet reads runtime.eval_settings.FLEET_SETTINGS and refuses any other.

    Example: `run_fleet_eval("base.gguf", {"sql": "sql.gguf", "faq": "faq.gguf"}, "eval.jsonl", "out/fleet")`.
    """
    settings = replace(settings or EvalSettings(), **options)
    if not adapters:
        raise SettingError("<adapters>: give at least one NAME=ADAPTER.gguf to evaluate over the base", "adapters")
    settings.check(fleet=True)
    out_dir = Path(out_dir)
    refuse_foreign_out_dir(out_dir)
    examples = read_examples(data, limit=settings.limit)
    scorer = parse_metric(settings.metric, rubric_path=str(settings.rubric) if settings.rubric else None,
                          threads=settings.threads)
    refuse_unscoreable(scorer, examples, data, settings.metric)
    engine = Engine(base, adapters, base_name="base" if "base" not in adapters else Path(base).stem,
                    n_ctx=settings.n_ctx, threads=settings.threads)
    try:
        prompts = _prompts(engine, examples, adapters, settings, data)
        answers = {name: _answers(engine, name, model_prompts, max_tokens=settings.max_tokens)
                   for name, model_prompts in prompts.items()}
    finally:
        engine.close()
    scores = {name: [scorer.score(row["answer"], e.gold, e.question) for row, e in zip(rows, examples)]
              for name, rows in answers.items()}
    if isinstance(scorer, Judge):
        scorer.close()
    report = {"base": str(base), "data": str(data), "metric": settings.metric, "n": len(examples),
              "settings": {"max_tokens": settings.max_tokens, "n_ctx": settings.n_ctx, "threads": settings.threads,
                           "system": settings.system, "decoding": "greedy"},
              "models": _models_section(base, adapters, engine.base_name, scores)}
    _write(out_dir, report, examples, answers, scores)
    report["outputs"] = {EVAL_FILES[role]: str(out_dir / EVAL_FILES[role]) for role in FLEET_FILES}
    return report


def _markdown(report: dict) -> str:
    lines = [f"# Adapters over {report['base']}", "",
             f"{report['n']} examples from {report['data']}, metric `{report['metric']}`, greedy; the base is "
             "prompted zero-shot with the system prompt, each adapter with the example's own turns.", "",
             "| model | score % [95%] n | vs base, points [95%] n |", "|---|---:|---:|"]
    for row in report["models"]:
        lines.append(f"| {row['model']} | {shown_interval(row['score'])} | "
                     f"{shown_interval(row['difference_vs_base'], points=True)} |")
    return "\n".join(lines) + "\n"
