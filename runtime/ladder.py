"""The baseline ladder: what a fine-tune must beat to justify itself, measured on the base GGUF that ships.

Rungs, all on the base at the shipped quant, with the same greedy decoding and metric as the fine-tune:
  1. zero-shot: the recipe's system prompt (schema, instructions);
  2. fixed k-shot: k training conversations chosen once to cover the training data (runtime.shots.choose_fixed);
  3. retrieved k-shot: per question, the k training conversations BM25 finds closest (never its own copies);
  4. retrieved context (with --context docs.jsonl): the passages BM25 finds closest, in the system prompt.
The fine-tune runs with the short prompt it was trained with (the eval conversation's own turns).

One model load serves every rung. Every answer is what llama.cpp answers the request alone, bit for bit (each
prompt evaluated alone from an empty slot; answer tokens batched with other requests' only where runtime.batching
shows that changes no bit), so the score in the report is the GGUF's own. Cost per request (prompt tokens, time to
first token, total time) is measured on `latency_samples` evenly spaced requests per rung, decoded alone from an
empty cache, one token per decode step, as llama.cpp serves by default. The summary is a table of small functions,
each returning one section of report["ladder"].

Example:
    rungs = build_rungs(examples, system="Answer in SQL.", shots=3, shots_from="train.jsonl")
    runs = prepare(rungs, examples)
    generate("base-Q4_K_M.gguf", runs, n_ctx=4096, threads=2, max_tokens=64)
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from runtime.eval_settings import DEFAULT_CONTEXT_K
from runtime.examples import Example, baseline_prompt
from runtime.stats import mean_interval, paired_difference
from runtime.verdict import strongest_section, tied_section, verdict_section

TOKENIZER_CTX = 64  # the Llama object only tokenizes and renders; the decoder makes its own context
SLOTS = 4  # requests decoded at once (runtime.batching); each slot holds the longest prompt and answer
FINETUNE = "fine-tune"


@dataclass(frozen=True)
class Rung:
    key: str
    label: str  # as the verdict says it: "retrieved 3-shot"
    prompt: Callable[[Example], tuple[list[dict], dict]]  # messages, and what was put in (training lines, passages)


@dataclass
class RungRun:
    """One rung (or the fine-tune) over the eval set: prompts in, answers, costs and scores out."""

    key: str
    label: str
    prompts: list[list[dict]]
    sources: list[dict]
    answers: list[str] = field(default_factory=list)
    answer_tokens: list[list[int]] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    latency: list[dict] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- rungs -------------------------------------------------------------------------------------------------------

def _zero_shot(system: str | None) -> Rung:
    return Rung("zero-shot", "zero-shot", lambda e: (baseline_prompt(e, system=system, shots=[]), {}))


def _fixed(system: str | None, chosen: list) -> Rung:
    from runtime.shots import shot_messages

    turns = shot_messages(chosen)
    return Rung(f"fixed-{len(chosen)}-shot", f"fixed {len(chosen)}-shot",
                lambda e: (baseline_prompt(e, system=system, shots=turns), {"shots": [s.line for s in chosen]}))


def _retrieved(system: str | None, retriever, k: int) -> Rung:
    from runtime.shots import shot_messages

    def prompt(example: Example):
        found = retriever.for_example(example, k)
        return baseline_prompt(example, system=system, shots=shot_messages(found)), {"shots": [s.line for s in found]}

    return Rung(f"retrieved-{k}-shot", f"retrieved {k}-shot", prompt)


def _with_context(system: str | None, retriever, k: int) -> Rung:
    k = min(k, len(retriever.passages))

    def prompt(example: Example):
        passages = retriever.for_example(example, k)
        own = [m["content"] for m in example.prompt if m["role"] == "system"]
        lead = system if system else "\n\n".join(own)
        context = "Context:\n" + "\n\n".join(p.text for p in passages)
        text = f"{lead}\n\n{context}" if lead else context
        return baseline_prompt(example, system=text, shots=[]), {"passages": [p.line for p in passages]}

    return Rung("context", f"retrieved context ({k} passages)", prompt)


def build_rungs(examples: Sequence[Example], *, system: str | None, shots: int = 0,
                shots_from: str | Path | None = None, context: str | Path | None = None,
                context_k: int = DEFAULT_CONTEXT_K) -> list[Rung]:
    """The ladder for these eval examples; every input is checked here, before any model loads."""
    from runtime import shots as shots_mod

    rungs = [_zero_shot(system)]
    if shots > 0:
        pool = shots_mod.read_pool(shots_from, shots=shots)
        questions = [shots_mod.user_text(e.prompt) for e in examples]
        rungs += [_fixed(system, shots_mod.choose_fixed(pool, shots, avoid=questions)),
                  _retrieved(system, shots_mod.RetrievedShots(pool), shots)]
    if context is not None:
        rungs.append(_with_context(system, shots_mod.RetrievedContext(shots_mod.read_context(context)), context_k))
    return rungs


def prepare(rungs: Sequence[Rung], examples: Sequence[Example]) -> list[RungRun]:
    runs = []
    for rung in rungs:
        built = [rung.prompt(example) for example in examples]
        runs.append(RungRun(rung.key, rung.label, [p for p, _ in built], [s for _, s in built]))
    return runs


def finetune_run(examples: Sequence[Example]) -> RungRun:
    return RungRun(FINETUNE, "fine-tune", [list(e.prompt) for e in examples], [{} for _ in examples])


# ---- generation --------------------------------------------------------------------------------------------------

class Progress:
    """One line on stderr per rung every few seconds and at its end (rung, questions done / total, elapsed): the
    eval stage runs for minutes. Called with each decode step's sequences (runtime.decode's on_step)."""

    EVERY_S = 10.0

    def __init__(self, label: str, total: int, started: float):
        self.label, self.total, self.started, self.shown, self.done = label, total, started, time.perf_counter(), 0

    def __call__(self, active) -> None:
        self.done += sum(1 for sequence in active if sequence.stopped is not None)
        now = time.perf_counter()
        if self.done == self.total or now - self.shown >= self.EVERY_S:
            self.shown = now
            print(f"eval: {self.label} {self.done}/{self.total} ({now - self.started:.0f} s)", file=sys.stderr,
                  flush=True)


def timing_sample(n: int, samples: int) -> list[int]:
    """Evenly spaced questions to time one at a time (the first, the last, and between)."""
    if n == 0 or samples <= 0:
        return []
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, samples))})


def generate(path: str | Path, runs: Sequence[RungRun], *, n_ctx: int, threads: int | None, max_tokens: int,
             latency_samples: int = 16, golds: Sequence[str] | None = None, label: str = "ladder") -> dict:
    """Fill every run's answers, prompt token counts and latencies with one load of `path`. Every answer is the one
    llama.cpp gives the request alone (runtime.batching: batched only where that is bit-identical), so the reported
    scores are the GGUF's own; `latency_samples` evenly spaced requests per run are decoded alone from an empty
    slot and timed (time to first token, total), as a user's cold request. Returns wall times, the decoder's
    counts and, with `golds`, the first run's prompts rendered with the gold answer (the KLD texts)."""
    from runtime.batching import BatchExact
    from runtime.decode import Decoder
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    llm = open_gguf(path, n_ctx=TOKENIZER_CTX, threads=threads)
    try:
        where = str(path)
        tokens = [[prompt_tokens(llm, render_chat(llm, p, path=where)) for p in run.prompts] for run in runs]
        rendered = None if golds is None else [
            render_chat(llm, list(p) + [{"role": "assistant", "content": g}], add_generation_prompt=False, path=where)
            for p, g in zip(runs[0].prompts, golds)]
        # Each slot gets what the longest prompt and answer need, not all of --ctx.
        longest = max((len(t) for run_tokens in tokens for t in run_tokens), default=0)
        decoder = Decoder(llm, n_seq=SLOTS, n_ctx=min(n_ctx, longest + max_tokens + 1), threads=threads)
        started = time.perf_counter()
        counts: dict = {"prompt_evaluated": [], "run_s": []}
        try:
            step = BatchExact(decoder)
            for run, run_tokens in zip(runs, tokens):
                run_started = time.perf_counter()
                _answer_run(decoder, step, run, run_tokens, max_tokens=max_tokens, latency_samples=latency_samples,
                            progress=Progress(f"{label}: {run.label}", len(run_tokens), started))
                counts["run_s"].append(time.perf_counter() - run_started)
                counts["prompt_evaluated"].append(sum(run.prompt_tokens))
            counts.update(evaluated=decoder.counts["evaluated"], steps=decoder.counts["steps"],
                          batch_exact=step.batched, tokens_batched=step.tokens_batched)
        finally:
            decoder.close()
    finally:
        llm.close()
    return {"generate_s": time.perf_counter() - started, "rendered": rendered, **counts}


def _answer_run(decoder, step, run: RungRun, run_tokens: list[list[int]], *, max_tokens: int, latency_samples: int,
                progress) -> None:
    """The timed sample alone, one at a time; the rest several at a time under `step` (runtime.batching)."""
    from runtime.decode import Request
    from runtime.generate import generation

    n = len(run_tokens)
    timed = timing_sample(n, latency_samples)
    rest = [i for i in range(n) if i not in set(timed)]

    requests = [Request(tokens, max_tokens=max_tokens) for tokens in run_tokens]
    sequences = {i: decoder.run([requests[i]], plain=True, on_step=progress)[0] for i in timed}
    sequences.update(zip(rest, decoder.run([requests[i] for i in rest], fresh=True, step_fn=step, on_step=progress)))
    answers = [generation(decoder, sequences[i]) for i in range(n)]
    run.answers, run.answer_tokens, run.prompt_tokens = ([a.text for a in answers], [a.tokens for a in answers],
                                                         [a.n_prompt for a in answers])
    run.latency = [{"ttft_s": sequences[i].first_token_s, "total_s": sequences[i].total_s,
                    "n_generated": answers[i].n_generated} for i in timed]


def score_gguf(path: str | Path, examples: Sequence[Example], scorer, *, n_ctx: int, threads: int | None,
               max_tokens: int, latency_samples: int = 0) -> RungRun:
    """One GGUF's answers to the eval set with its own prompts, scored: what the report says of a fine-tune
    (every answer decoded one request at a time, as llama.cpp answers it). `run.scores` per example; the mean
    interval is stats.mean_interval(run.scores)."""
    run = finetune_run(examples)
    generate(path, [run], n_ctx=n_ctx, threads=threads, max_tokens=max_tokens, latency_samples=latency_samples,
             label=Path(path).name)
    score([run], examples, scorer)
    return run


def score(runs: Sequence[RungRun], examples: Sequence[Example], scorer) -> None:
    for run in runs:
        for answer, example in zip(run.answers, examples):
            verdict = scorer.score(answer, example.gold, example.question)
            run.scores.append(verdict.score)
            run.notes.append(verdict.note)


@dataclass
class LadderResult:
    rows: list[dict]  # predictions.jsonl
    rendered: list[str]  # the fine-tune's prompts with the gold answers (KLD texts)
    scores: dict  # {"model": interval, "baseline": the strongest rung's interval}
    difference: dict | None  # fine-tune minus the strongest rung
    summary: dict | None  # report["ladder"]


def evaluate(model: Path, baseline: Path | None, examples: Sequence[Example], runs: Sequence[RungRun], scorer, *,
             n_ctx: int, threads: int | None, max_tokens: int, latency_samples: int = 16,
             requests_per_day: float | None = None) -> LadderResult:
    """Generate with the fine-tune, then with the base on every rung, score all, and summarize."""
    finetune = finetune_run(examples)
    settings = {"n_ctx": n_ctx, "threads": threads, "max_tokens": max_tokens, "latency_samples": latency_samples}
    own = generate(model, [finetune], golds=[e.gold for e in examples], label="fine-tune", **settings)
    base = generate(baseline, runs, label="ladder", **settings) if runs else None
    score([finetune, *runs], examples, scorer)
    scores = {"model": mean_interval(finetune.scores)}
    if not runs:
        return LadderResult(prediction_rows(examples, finetune, [], None), own["rendered"], scores, None, None)
    summary = summarize(finetune, runs, requests_per_day=requests_per_day)
    summary["wall_s"] = {"finetune": own["generate_s"], "ladder": base["generate_s"],
                         "rungs": {run.key: seconds for run, seconds in zip(runs, base["run_s"])}}
    # Every answer is the lone request's by construction (runtime.batching): none needed decoding again.
    summary["decoding"] = {"answers_redecoded": 0, "tokens_batched": own["tokens_batched"] + base["tokens_batched"]}
    fixed = [run.sources[0]["shots"] for run in runs if run.key.startswith("fixed-") and run.sources]
    summary["fixed_shots"] = fixed[0] if fixed else []
    best = next(row for row in summary["rungs"] if row["key"] == summary["strongest"])
    scores["baseline"] = best["score"]
    rows = prediction_rows(examples, finetune, runs, summary["strongest"])
    return LadderResult(rows, own["rendered"], scores, best["difference"], summary)


def prediction_rows(examples: Sequence[Example], finetune: RungRun, runs: Sequence[RungRun],
                    strongest: str | None) -> list[dict]:
    """One row per example: the fine-tune's answer, the strongest rung's as `baseline` (review.md puts the two side
    by side), and every rung's answer, score and what was retrieved for it."""
    best = next((run for run in runs if run.key == strongest), None)
    rows = []
    for i, example in enumerate(examples):
        row = {"line": example.line, "question": example.question, "gold": example.gold,
               "prediction": finetune.answers[i], "model_score": finetune.scores[i], "model_note": finetune.notes[i],
               "model_prompt_tokens": finetune.prompt_tokens[i]}
        if best is not None:
            row.update(baseline=best.answers[i], baseline_score=best.scores[i], baseline_note=best.notes[i],
                       baseline_rung=best.key)
            row["rungs"] = {run.key: {"answer": run.answers[i], "score": run.scores[i], "note": run.notes[i],
                                      "prompt_tokens": run.prompt_tokens[i], **run.sources[i]} for run in runs}
        rows.append(row)
    return rows


# ---- summary: one small function per section of report["ladder"] -------------------------------------------------

def _mean(values) -> float | None:
    return float(statistics.fmean(values)) if values else None


def _median_ms(latency: list[dict], key: str) -> float | None:
    return 1000.0 * statistics.median(row[key] for row in latency) if latency else None


def cost(run: RungRun) -> dict:
    return {"prompt_tokens": _mean(run.prompt_tokens), "ttft_ms": _median_ms(run.latency, "ttft_s"),
            "total_ms": _median_ms(run.latency, "total_s"), "timed_requests": len(run.latency)}


def _rungs_section(finetune: RungRun, rungs: Sequence[RungRun], report: dict, options: dict) -> list[dict]:
    return [{"key": run.key, "label": run.label, "score": mean_interval(run.scores), **cost(run),
             "difference": paired_difference(finetune.scores, run.scores)} for run in rungs]


def _finetune_section(finetune: RungRun, rungs, report: dict, options: dict) -> dict:
    return {"key": finetune.key, "label": finetune.label, "score": mean_interval(finetune.scores), **cost(finetune)}


def _delta(a, b):
    return None if a is None or b is None else a - b


def _prompt_tax_section(finetune, rungs, report: dict, options: dict) -> dict:
    """What the fine-tune saves per request against the strongest rung, and per day at the recipe's traffic."""
    best = next(row for row in report["rungs"] if row["key"] == report["strongest"])
    own = report["finetune"]
    tax = {"vs": best["key"], "label": best["label"],
           "tokens_per_request": _delta(best["prompt_tokens"], own["prompt_tokens"]),
           "ttft_ms_per_request": _delta(best["ttft_ms"], own["ttft_ms"]),
           "total_ms_per_request": _delta(best["total_ms"], own["total_ms"])}
    per_day = options.get("requests_per_day")
    if per_day:
        tax["requests_per_day"] = per_day
        tax["tokens_per_day"] = None if tax["tokens_per_request"] is None else tax["tokens_per_request"] * per_day
        # Prompt processing is the tax: the total time also counts the answer, whose length is not the prompt's doing.
        tax["hours_per_day"] = (None if tax["ttft_ms_per_request"] is None
                                else tax["ttft_ms_per_request"] * per_day / 3.6e6)
    return tax


SECTIONS: tuple[tuple[str, Callable], ...] = (
    ("rungs", _rungs_section),
    ("finetune", _finetune_section),
    ("strongest", strongest_section),
    ("tied", tied_section),
    ("prompt_tax", _prompt_tax_section),
    ("verdict", verdict_section),
)


def summarize(finetune: RungRun, rungs: Sequence[RungRun], **options) -> dict:
    """report["ladder"]: each section computed in order (later ones read earlier ones)."""
    report: dict = {}
    for name, section in SECTIONS:
        report[name] = section(finetune, rungs, report, options)
    return report


def explain_gates(rows: list[dict], summary: dict | None) -> list[dict]:
    """The `earned` gate's line carries the verdict, so a refused release says why in the ladder's words."""
    for row in rows:
        if row["gate"] == "earned" and summary is not None:
            row["text"] += f"; {summary['verdict']['text']}"
    return rows
