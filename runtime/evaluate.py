"""`run_eval`: does the shipped GGUF beat the well-prompted base, without breaking anything else, as fast?

Order of work: check every input first (a typo in the metric must not cost an hour of generation), then generate
with each model in turn (one model in memory at a time; the base answers every rung of the ladder in one load, see
runtime/ladder.py), then score (the judge model loads only now), then the table of measurements
(runtime/measurements.py: probe, KLD, parity, tensor types, speed), gates, and finally all outputs appear at once
in OUT_DIR.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from convert.common.fsutil import atomic_dir, refuse_own_input
from runtime import examples as examples_mod
from runtime import ladder
from runtime.eval_settings import EvalSettings, refuse_foreign_out_dir, refuse_long_prompts
from runtime.gates import check_gates, gates_on
from runtime.generate import prompt_tokens, render_chat
from runtime.load import check_context, check_gguf, open_gguf
from runtime.measurements import MEASUREMENTS, EvalRun
from runtime.metrics import Judge, parse_metric, refuse_unscoreable
from runtime.report import EVAL_FILES, EvalReport

def _refuse_prompts_that_do_not_fit(path: Path, prompts: list[list[dict]], lines: list[int], data, *, n_ctx: int,
                                    label: str) -> None:
    """Every prompt, rendered and tokenized by the model that will answer it, must leave room for an answer in
    n_ctx: checked with the vocabulary alone, before any generation, instead of cutting prompts later."""
    llm = open_gguf(path, vocab_only=True)
    too_long = []
    for line, messages in zip(lines, prompts):
        n_tokens = len(prompt_tokens(llm, render_chat(llm, messages, path=str(path))))
        if n_tokens >= n_ctx:
            too_long.append((line, n_tokens))
    llm.close()
    refuse_long_prompts(data, too_long, len(prompts), n_ctx=n_ctx, label=label)


def _check_models(model, out_dir: Path, data, settings: EvalSettings) -> tuple[Path, Path | None, Path | None]:
    """The GGUFs, checked (an n_ctx the machine cannot hold is one line, not the OOM killer), and none of the
    inputs inside the report folder, which is replaced whole."""
    model = check_gguf(model)
    baseline = check_gguf(settings.baseline) if settings.baseline else None
    for path in (model, baseline):
        if path is not None:
            check_context(path, settings.n_ctx)
    refuse_own_input(out_dir, {"model": model, "baseline": baseline, "eval data": data,
                               "reference": settings.reference, "training data (--shots-from)": settings.shots_from,
                               "probe text": settings.probe, "choices": settings.choices,
                               "preference pairs": settings.pairs})
    return model, baseline, check_gguf(settings.reference) if settings.reference else None


def prepare(model, data, out_dir: Path, settings: EvalSettings) -> EvalRun:
    """Every check and every read that can fail, before the first model generates."""
    from runtime.perplexity import read_choices, read_probe

    settings.check()
    model, baseline, reference = _check_models(model, out_dir, data, settings)
    examples = examples_mod.read_examples(data, limit=settings.limit)
    rungs = [] if baseline is None else ladder.build_rungs(
        examples, system=settings.system, shots=settings.shots, shots_from=settings.shots_from,
        context=settings.context, context_k=settings.passages)
    scorer = parse_metric(settings.metric, rubric_path=str(settings.rubric) if settings.rubric else None,
                          threads=settings.threads)
    refuse_unscoreable(scorer, examples, data, settings.metric)
    gates = gates_on(settings.gates, settings)
    probe_name, probe_text = read_probe(settings.probe)
    choices = read_choices(settings.choices) if settings.choices else None
    from runtime.pairs_eval import read_eval_pairs

    pairs = read_eval_pairs(settings.pairs) if settings.pairs else None  # a bad pair stops here, before generation
    refuse_foreign_out_dir(out_dir)
    lines = [example.line for example in examples]
    _refuse_prompts_that_do_not_fit(model, [e.prompt for e in examples], lines, data, n_ctx=settings.n_ctx,
                                    label="fine-tune")
    ladder_runs = ladder.prepare(rungs, examples)
    for run in ladder_runs:
        _refuse_prompts_that_do_not_fit(baseline, run.prompts, lines, data, n_ctx=settings.n_ctx,
                                        label=f"{run.label} baseline")
    return EvalRun(settings, model, baseline, reference, data, out_dir, examples, scorer, gates, ladder_runs,
                   probe_name, probe_text, choices, pairs=pairs)


def _answer_and_score(run: EvalRun) -> EvalReport:
    """Generation (one load of each model: the base serves every rung at once), then scoring (a judge model
    loads only now, after the generators are closed)."""
    settings = run.settings
    run.result = result = ladder.evaluate(
        run.model, run.baseline, run.examples, run.ladder_runs, run.scorer, n_ctx=settings.n_ctx,
        threads=settings.threads, max_tokens=settings.max_tokens, latency_samples=settings.latency_samples,
        requests_per_day=settings.requests_per_day)
    if isinstance(run.scorer, Judge):
        run.scorer.close()
    return EvalReport(model=str(run.model), baseline=str(run.baseline) if run.baseline else None, data=str(run.data),
                      metric=settings.metric, n=len(result.rows), settings=settings.report_section(),
                      scores=result.scores, difference=result.difference, ladder=result.summary)


def run_eval(model: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
             settings: EvalSettings | None = None, **options) -> dict:
    """Evaluate `model` on `data` (JSONL conversations; the last assistant turn is the gold answer) and write
    report.json, report.md, review.md, eval.png and predictions.jsonl into `out_dir`. Returns the report;
    `report["passed"]` is False when a gate failed (the CLI then exits non-zero). With a baseline, the base runs
    the whole ladder (runtime.ladder: zero-shot, fixed and retrieved `shots`-shot, `context` passages) and the
    fine-tune is compared with the strongest rung. `options` are EvalSettings fields, over `settings`.

    Example: `run_eval("ft.gguf", "eval.jsonl", "out/eval", baseline="base.gguf", system="Answer in SQL.",
    shots=3, shots_from="train.jsonl", metric="sql-exec:shop.sqlite", gates={"min_gain": 5})`.
    """
    settings = replace(settings or EvalSettings(), **options)
    out_dir = Path(out_dir)
    run = prepare(model, data, out_dir, settings)
    report = _answer_and_score(run)
    for measurement in MEASUREMENTS:
        if measurement.applies(run):
            setattr(report, measurement.section, measurement.measure(run))
    report.gates = ladder.explain_gates(check_gates(run.gates, report.as_dict()), report.ladder)
    report.failed_gates = [row["gate"] for row in report.gates if not row["passed"]]
    report.passed = not report.failed_gates
    from runtime.report import write_all

    result = report.as_dict()
    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_all(result, run.result.rows, tmp)
    result["outputs"] = {name: str(out_dir / name) for name in EVAL_FILES.values()}
    return result
