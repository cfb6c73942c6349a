"""`run_eval`: does the shipped GGUF beat the well-prompted base, without breaking anything else, as fast?

Order of work: check every input first (a typo in --metric must not cost an hour of generation), then generate
with each model in turn (one model in memory at a time; the base answers every rung of the ladder in one load, see
runtime/ladder.py), then score (the judge model loads only now), then the
optional measurements (probe, KLD, parity, speed), gates, and finally all outputs appear at once in OUT_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_dir, refuse_own_input
from runtime import examples as examples_mod
from runtime import ladder
from runtime.gates import GATES, check_gates, resolve_gates
from runtime.generate import prompt_tokens, render_chat
from runtime.load import check_context, check_gguf, open_gguf
from runtime.metrics import Judge, parse_metric, refuse_unscoreable


def _check_settings(*, max_tokens: int, n_ctx: int, threads: int | None) -> None:
    for option, value, least in (("--max-tokens", max_tokens, 1), ("--ctx", n_ctx, 1), ("--threads", threads, 1)):
        if value is not None and value < least:
            raise EdgeftError(f"{option} {value}: must be at least {least}")


def _refuse_prompts_that_do_not_fit(path: Path, prompts: list[list[dict]], lines: list[int], data, *, n_ctx: int,
                                    label: str) -> None:
    """Every prompt, rendered and tokenized by the model that will answer it, must leave room for an answer in
    --ctx: checked with the vocabulary alone, before any generation, instead of cutting prompts later."""
    llm = open_gguf(path, vocab_only=True)
    too_long = []
    for line, messages in zip(lines, prompts):
        n_tokens = len(prompt_tokens(llm, render_chat(llm, messages, path=str(path))))
        if n_tokens >= n_ctx:
            too_long.append((line, n_tokens))
    llm.close()
    if too_long:
        line, n_tokens = too_long[0]
        raise EdgeftError(f"{data}:{line}: the {label} prompt is {n_tokens} tokens, which leaves no room for an answer "
                          f"in --ctx {n_ctx}; {len(too_long)} of {len(prompts)} prompts do not fit: raise --ctx or "
                          "shorten them")


def _ladder_rungs(examples, baseline, *, system, shots: int, shots_from, context, context_k: int) -> list:
    """The base's rungs (none without a baseline); every shot and context input is checked here, up front."""
    if shots < 0:
        raise EdgeftError(f"--shots {shots}: must be 0 or more")
    if baseline is None:
        if context is not None:
            raise EdgeftError("--context needs --baseline: retrieved passages are a rung of the base's ladder")
        return []
    if context_k < 1:
        raise EdgeftError(f"--context-k {context_k}: must be at least 1")
    return ladder.build_rungs(examples, system=system, shots=shots, shots_from=shots_from, context=context,
                              context_k=context_k)


def _probe(path: Path, text: str, choices: list[dict] | None, *, window: int, threads: int | None,
           max_tokens: int | None) -> tuple[dict, dict | None]:
    from runtime.perplexity import multiple_choice, perplexity

    llm = open_gguf(path, n_ctx=window, logits_all=True, threads=threads)
    result = perplexity(llm, text, window=window, max_tokens=max_tokens)
    mc = multiple_choice(llm, choices) if choices else None
    llm.close()
    return result, mc


def _safe_out_dir(out_dir: Path) -> bool:
    """Overwrite only an earlier eval's folder (it has report.json) or an empty one, never an arbitrary folder."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise EdgeftError(f"-o {out_dir}: exists and is not a folder; choose another output folder")
    if any(out_dir.iterdir()) and not (out_dir / "report.json").is_file():
        raise EdgeftError(f"-o {out_dir}: folder is not empty and holds no earlier report.json; choose another -o")
    return True


def run_eval(model: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike, *,
             baseline: str | os.PathLike | None = None, metric: str = "exact", system: str | None = None,
             shots: int = 0, shots_from: str | os.PathLike | None = None, probe: str | os.PathLike | None = None,
             choices: str | os.PathLike | None = None, reference: str | os.PathLike | None = None,
             hf: str | os.PathLike | None = None, gates: dict[str, float] | None = None,
             rubric: str | os.PathLike | None = None, max_tokens: int = 256, n_ctx: int = 4096,
             threads: int | None = None, limit: int | None = None, probe_window: int = 512,
             probe_max_tokens: int | None = 8192, speed: bool = True, bench_prompt: int = 128, bench_gen: int = 32,
             bench_repeat: int = 5, context: str | os.PathLike | None = None, context_k: int = 3,
             requests_per_day: float | None = None, latency_samples: int = 16) -> dict:
    """Evaluate `model` on `data` (JSONL conversations; the last assistant turn is the gold answer) and write
    report.json, report.md, review.md, eval.png and predictions.jsonl into `out_dir`. Returns the report;
    `report["passed"]` is False when a gate failed (the CLI then exits non-zero). With a baseline, the base runs
    the whole ladder (runtime.ladder: zero-shot, fixed and retrieved `shots`-shot, `context` passages) and the
    fine-tune is compared with the strongest rung.

    Example: `run_eval("ft.gguf", "eval.jsonl", "out/eval", baseline="base.gguf", system="Answer in SQL.",
    shots=3, shots_from="train.jsonl", metric="sql-exec:shop.sqlite", gates={"min_gain": 5})`.
    """
    _check_settings(max_tokens=max_tokens, n_ctx=n_ctx, threads=threads)
    model, out_dir = check_gguf(model), Path(out_dir)
    baseline = check_gguf(baseline) if baseline else None
    for path in (model, baseline):
        if path is not None:
            check_context(path, n_ctx)  # an --ctx the machine cannot hold is one line, not the OOM killer
    # The report folder is replaced whole, so it must not hold anything the eval reads.
    refuse_own_input(out_dir, {"model": model, "baseline": baseline, "eval data": data, "reference": reference,
                               "training data (--shots-from)": shots_from, "probe text": probe, "choices": choices})
    reference = check_gguf(reference) if reference else None
    examples = examples_mod.read_examples(data, limit=limit)
    rungs = _ladder_rungs(examples, baseline, system=system, shots=shots, shots_from=shots_from, context=context,
                          context_k=context_k)
    scorer = parse_metric(metric, rubric_path=str(rubric) if rubric else None, threads=threads)
    refuse_unscoreable(scorer, examples, data, metric)
    gates = resolve_gates(gates or {})
    if hf is not None:
        gates.setdefault("max_hf_mismatches", 0)  # --hf is asked for to be checked, not only to be read about
    available = {"min_gain": baseline is not None, "earned": baseline is not None,
                 "max_ppl_ratio": baseline is not None,
                 "max_kld": reference is not None, "min_speed_ratio": baseline is not None and speed,
                 "max_hf_mismatches": hf is not None}
    for name in gates:
        if not available[name]:
            raise EdgeftError(f"gate {name} needs {GATES[name].needs}; add it or drop the gate")
    from runtime.perplexity import read_choices, read_probe

    probe_name, probe_text = read_probe(probe)
    mc_items = read_choices(choices) if choices else None
    _safe_out_dir(out_dir)
    lines = [example.line for example in examples]
    _refuse_prompts_that_do_not_fit(model, [e.prompt for e in examples], lines, data, n_ctx=n_ctx, label="fine-tune")
    ladder_runs = ladder.prepare(rungs, examples)
    for run in ladder_runs:
        _refuse_prompts_that_do_not_fit(baseline, run.prompts, lines, data, n_ctx=n_ctx, label=f"{run.label} baseline")

    # 1-2. generation (one load of each model: the base serves every rung at once), then scoring (a judge model
    # loads only now, after the generators are closed)
    result = ladder.evaluate(model, baseline, examples, ladder_runs, scorer, n_ctx=n_ctx, threads=threads,
                             max_tokens=max_tokens, latency_samples=latency_samples,
                             requests_per_day=requests_per_day)
    if isinstance(scorer, Judge):
        scorer.close()
    rows, rendered = result.rows, result.rendered
    report: dict = {
        "model": str(model), "baseline": str(baseline) if baseline else None, "data": str(data), "metric": metric,
        "n": len(rows),
        "settings": {"max_tokens": max_tokens, "n_ctx": n_ctx, "threads": threads, "system": system,
                     "shots": shots, "shots_from": str(shots_from) if shots_from else None, "decoding": "greedy",
                     "context": str(context) if context else None, "context_k": context_k if context else None,
                     "requests_per_day": requests_per_day},
        "scores": result.scores, "difference": result.difference,
    }
    if result.summary is not None:
        report["ladder"] = result.summary
    if isinstance(scorer, Judge):
        unparsed_model = sum(1 for r in rows if r["model_note"].startswith("unparseable"))
        unparsed_base = sum(1 for r in rows if r.get("baseline_note", "").startswith("unparseable"))
        report["judge"] = {"model": str(scorer.path), "unparsed": {"model": unparsed_model, "baseline": unparsed_base}}

    # 3. forgetting probe: always for the model, and the ratio when the base is known
    probe_result: dict = {"text": probe_name}
    probe_result["model"], model_mc = _probe(model, probe_text, mc_items, window=probe_window, threads=threads,
                                             max_tokens=probe_max_tokens)
    if baseline is not None:
        probe_result["baseline"], base_mc = _probe(baseline, probe_text, mc_items, window=probe_window,
                                                   threads=threads, max_tokens=probe_max_tokens)
        probe_result["ppl_ratio"] = probe_result["model"]["ppl"] / probe_result["baseline"]["ppl"]
    else:
        base_mc = None
    if mc_items:
        probe_result["choices"] = {"model": model_mc, **({"baseline": base_mc} if base_mc else {})}
    report["probe"] = probe_result

    # 4. quantization quality, parity, speed
    if reference is not None:
        from runtime.kld import compare

        report["quantization"] = compare(model, reference, rendered, n_ctx=n_ctx, threads=threads)
    if hf is not None:
        from runtime.parity import check_parity

        report["parity"] = check_parity(model, hf, [e.prompt + [{"role": "assistant", "content": e.gold}]
                                                    for e in examples])
    if baseline is not None:
        from runtime.load import tensor_type_differences

        report["tensor_types"] = tensor_type_differences(model, baseline)
    if speed and baseline is not None:
        from runtime.throughput import measure_pair, speed_ratio

        # One llama.cpp thread: the gate compares two files, not the machine's best speed, and with two threads
        # ggml's spin-waiting workers starve on a busy 2-core box (measured 3-19 tok/s for one 135M file in one
        # run, which failed the gate for two files with identical tensor types).
        model_speed, base_speed = measure_pair(model, baseline, n_prompt=bench_prompt, n_gen=bench_gen,
                                               threads=1, repeat=bench_repeat)
        report["throughput"] = {"model": model_speed, "baseline": base_speed,
                                "ratio": speed_ratio(model_speed, base_speed)}

    # 5. gates and outputs
    report["gates"] = ladder.explain_gates(check_gates(gates, report), report.get("ladder"))
    report["failed_gates"] = [row["gate"] for row in report["gates"] if not row["passed"]]
    report["passed"] = not report["failed_gates"]
    from runtime.report import write_all

    with atomic_dir(out_dir, overwrite=True) as tmp:
        write_all(report, rows, tmp)
    report["outputs"] = {name: str(out_dir / name) for name in ("report.json", "report.md", "review.md",
                                                                  "eval.png", "predictions.jsonl")}
    return report
