"""The measurements of an eval after the answers are scored, as a table: each row names the report section it fills,
when it applies, and the small function that measures it. `run_eval` runs them in order, one model loaded at a time.

Adding a measurement is adding a row (and its section to `runtime.report.EvalReport`), the way a gate is a row of
`runtime.gates.GATES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from runtime.eval_settings import EvalSettings
from runtime.load import open_gguf
from runtime.metrics import Judge


@dataclass
class EvalRun:
    """Everything checked and read before the first answer is generated, and the scored answers after."""

    settings: EvalSettings
    model: Path
    baseline: Path | None
    reference: Path | None
    data: str
    out_dir: Path
    examples: list  # runtime.examples.Example
    scorer: object  # runtime.metrics scorer; a Judge holds a model until closed
    gates: dict[str, float]
    ladder_runs: list  # runtime.ladder.RungRun, one per rung of the base's ladder
    probe_name: str
    probe_text: str
    choices: list[dict] | None
    result: object = None  # runtime.ladder.LadderResult, once generated and scored
    pairs: list | None = None  # preference pairs (prompt, chosen, rejected), runtime.pairs_eval


@dataclass(frozen=True)
class Measurement:
    section: str  # the EvalReport field it fills
    applies: Callable[[EvalRun], bool]
    measure: Callable[[EvalRun], dict]


def _judge(run: EvalRun) -> dict:
    rows = run.result.rows
    unparsed_model = sum(1 for r in rows if r["model_note"].startswith("unparseable"))
    unparsed_base = sum(1 for r in rows if r.get("baseline_note", "").startswith("unparseable"))
    return {"model": str(run.scorer.path), "unparsed": {"model": unparsed_model, "baseline": unparsed_base}}


def _perplexity(path: Path, run: EvalRun) -> tuple[dict, dict | None]:
    from runtime.perplexity import multiple_choice, perplexity

    settings = run.settings
    llm = open_gguf(path, n_ctx=settings.probe_window, logits_all=True, threads=settings.threads)
    result = perplexity(llm, run.probe_text, window=settings.probe_window, max_tokens=settings.probe_max_tokens)
    choices = multiple_choice(llm, run.choices) if run.choices else None
    llm.close()
    return result, choices


def _probe(run: EvalRun) -> dict:
    """The forgetting probe: always for the model, and the ratio when the base is known."""
    section: dict = {"text": run.probe_name}
    section["model"], model_choices = _perplexity(run.model, run)
    base_choices = None
    if run.baseline is not None:
        section["baseline"], base_choices = _perplexity(run.baseline, run)
        section["ppl_ratio"] = section["model"]["ppl"] / section["baseline"]["ppl"]
    if run.choices:
        section["choices"] = {"model": model_choices, **({"baseline": base_choices} if base_choices else {})}
    return section


def _preference(run: EvalRun) -> dict:
    from runtime.pairs_eval import preference_section

    return preference_section(run.model, run.baseline, run.settings.pairs, pairs=run.pairs,
                              n_ctx=run.settings.n_ctx, threads=run.settings.threads)


def _quantization(run: EvalRun) -> dict:
    from runtime.kld import compare

    return compare(run.model, run.reference, run.result.rendered, n_ctx=run.settings.n_ctx,
                   threads=run.settings.threads)


def _parity(run: EvalRun) -> dict:
    from runtime.parity import check_parity

    return check_parity(run.model, run.settings.hf, [e.prompt + [{"role": "assistant", "content": e.gold}]
                                                     for e in run.examples])


def _tensor_types(run: EvalRun) -> dict:
    from runtime.load import tensor_type_differences

    return tensor_type_differences(run.model, run.baseline)


def _throughput(run: EvalRun) -> dict:
    from runtime.throughput import measure_pair, speed_ratio

    settings = run.settings
    # One llama.cpp thread: the gate compares two files, not the machine's best speed, and with two threads
    # ggml's spin-waiting workers starve on a busy 2-core box (measured 3-19 tok/s for one 135M file in one
    # run, which failed the gate for two files with identical tensor types).
    model_speed, base_speed = measure_pair(run.model, run.baseline, n_prompt=settings.bench_prompt,
                                           n_gen=settings.bench_gen, threads=1, repeat=settings.bench_repeat)
    return {"model": model_speed, "baseline": base_speed, "ratio": speed_ratio(model_speed, base_speed)}


MEASUREMENTS: tuple[Measurement, ...] = (
    Measurement("judge", lambda run: isinstance(run.scorer, Judge), _judge),
    Measurement("probe", lambda run: True, _probe),
    Measurement("preference", lambda run: run.pairs is not None, _preference),
    Measurement("quantization", lambda run: run.reference is not None, _quantization),
    Measurement("parity", lambda run: run.settings.hf is not None, _parity),
    Measurement("tensor_types", lambda run: run.baseline is not None, _tensor_types),
    Measurement("throughput", lambda run: run.baseline is not None and run.settings.speed, _throughput),
)
