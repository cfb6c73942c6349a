"""`edgeft eval MODEL-F16.gguf --quants ...`: the fine-tune's own task score at every candidate quant.

Each candidate is written by the project's quantizer (convert.quant.gguf_io.quantize_gguf: one streaming pass,
with the imatrix of the training data when there is one) and evaluated by `runtime.evaluate.run_eval`, the
function the shipped file's eval runs: same metric, greedy decoding, decoder and KLD against the F16. Then the
speed (runtime.throughput), and the choice (runtime.quant_choice): the smallest file that keeps the task.

Everything that can be refused is refused before the first byte is written: an unknown or unsupported type, a type
that needs an imatrix when there is none, a metric that cannot score the eval's gold answers, prompts that do not
fit, a disk without room for every candidate (the planned bytes of each file, summed).

Example:
    run_sweep("out/model-F16.gguf", "eval.jsonl", "out/quants", quants="auto", imatrix="out/imatrix.gguf")
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

from convert.common.errors import EdgeftError
from runtime.eval_settings import EvalSettings, SettingError
from runtime.quant_choice import choose_quant
from runtime.quant_report import SWEEP_FILES

# `--quants auto`, by the model's parameter count (the first row whose bound it stays under). Small models lose a
# task fast below 3 bits and their files are small anyway, so the 2-bit i-quants are not worth their eval time
# there; from 1B parameters IQ3_XXS and IQ2_M join, from 13B the 2-bit i-quants that big models survive. Types that
# need an imatrix are left out when there is none.
_COMMON = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K")
AUTO_QUANTS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (1e9, _COMMON),
    (13e9, _COMMON + ("IQ3_XXS", "IQ2_M")),
    (math.inf, _COMMON + ("IQ3_XXS", "IQ2_M", "IQ2_XS")),
)
# Not candidates: the float types are the reference itself; the ternary types are for ternary-trained models only.
_FLOAT, _TERNARY = "a float type: the F16 input is the reference", "ternary, for ternary-trained models only"
NOT_CANDIDATES = {"F32": _FLOAT, "F16": _FLOAT, "BF16": _FLOAT, "TQ1_0": _TERNARY, "TQ2_0": _TERNARY}
# What the sweep reads of EvalSettings; any other setting (a baseline, shots, gates...) belongs to the shipped file's
# eval and would be ignored here.
SWEEP_SETTINGS = ("metric", "rubric", "max_tokens", "n_ctx", "threads", "limit", "probe", "probe_window",
                  "probe_max_tokens", "latency_samples", "bench_prompt", "bench_gen", "bench_repeat",
                  "quant_tolerance")
SPEED_THREADS = 1  # as the eval's speed gate: figures comparable across files on a busy machine


@dataclass(frozen=True)
class Candidate:
    type: str
    file: str  # the file name it gets in the sweep folder
    planned_bytes: int


def candidate_names() -> list[str]:
    from convert.quant import FILE_TYPES

    return [name for name in FILE_TYPES if name not in NOT_CANDIDATES]


def parse_quants(spec: str | Sequence[str]) -> list[str] | None:
    """`--quants` as given: "auto" (None: chosen by size), or a list of llama.cpp names (comma-separated text or a
    sequence); each known, a candidate, given once."""
    from convert.quant import parse_file_type

    names = [part.strip() for part in (spec.split(",") if isinstance(spec, str) else spec) if str(part).strip()]
    if [name.lower() for name in names] == ["auto"]:
        return None
    if not names:
        raise SettingError("<quants> is empty: give types (Q8_0,Q4_K_M,...) or auto", "quants")
    chosen = []
    for name in names:
        try:
            key = parse_file_type(name).name
        except EdgeftError:
            raise SettingError(f"<quants>: unknown quant type {name!r}; known: {', '.join(candidate_names())} "
                               "(or auto)", "quants") from None
        if key in NOT_CANDIDATES:
            raise SettingError(f"<quants>: {key} is not a candidate ({NOT_CANDIDATES[key]}); known: "
                               f"{', '.join(candidate_names())}", "quants")
        if key in chosen:
            raise SettingError(f"<quants>: {key} is given twice", "quants")
        chosen.append(key)
    return chosen


def auto_quants(n_params: int) -> list[str]:
    """The default candidates for a model of `n_params` weights (AUTO_QUANTS)."""
    return list(next(names for bound, names in AUTO_QUANTS if n_params < bound))


def model_facts(path: Path) -> dict:
    """Weights, bits per weight and the tensor types of a GGUF, from its header."""
    from convert.gguf_reader import GGUFFile

    with GGUFFile(path) as model:
        n_weights = sum(math.prod(tensor.shape) for tensor in model.tensors)
        n_bytes = sum(tensor.nbytes for tensor in model.tensors)
        types = {tensor.qtype.name for tensor in model.tensors}
    return {"n_weights": n_weights, "bits_per_weight": 8.0 * n_bytes / max(1, n_weights), "types": types}


def sweep_settings(settings: EvalSettings) -> EvalSettings:
    """Of an eval's settings (the shipped file's, e.g. a release's), the ones the sweep reads."""
    return EvalSettings(**{name: getattr(settings, name) for name in SWEEP_SETTINGS})


def _refuse_unread(settings: EvalSettings) -> None:
    unread = settings.given_beyond(SWEEP_SETTINGS)
    if unread:
        raise SettingError(f"{', '.join(f'<{name}>' for name in unread)}: not with <quants> (the sweep scores the "
                           "fine-tune at each quant against the F16; the base's ladder, gates and parity run once, "
                           "on the shipped file)", *unread, "quants")


def plan_sweep(f16: Path, quants: str | Sequence[str], importance: dict | None,
               stem: str) -> tuple[list[Candidate], list[dict]]:
    """The candidates, largest first, with the bytes each file will take, and the types `auto` left out (with
    why); every refusal before any file is written."""
    from convert.quant.gguf_io import planned_size

    facts = model_facts(f16)
    unquantized = facts["types"] - {"F32", "F16", "BF16"}
    if unquantized:
        raise EdgeftError(f"{f16}: holds {sorted(unquantized)[0]} tensors; the sweep quantizes from the F16 "
                          "(or BF16/F32) GGUF, e.g. `edgeft convert MERGED -o model-F16.gguf --outtype f16`")
    names = parse_quants(quants)
    automatic = names is None
    candidates, left_out = [], []
    for name in auto_quants(facts["n_weights"]) if automatic else names:
        try:
            size = planned_size(f16, name, imatrix=importance)
        except EdgeftError as exc:  # needs an imatrix and there is none, or the imatrix is another model's
            if automatic and importance is None:
                left_out.append({"type": name, "reason": str(exc)})
                continue
            raise SettingError(f"<quants> {name}: {exc}", "quants") from None
        candidates.append(Candidate(name, f"{stem}-{name}.gguf", size))
    if not candidates:
        raise SettingError(f"<quants> auto: no type can be written: {left_out[0]['reason']}", "quants")
    return sorted(candidates, key=lambda c: -c.planned_bytes), left_out


def _check_inputs(f16: Path, data, out_dir: Path, settings: EvalSettings) -> None:
    """The eval's own checks (metric and gold answers, prompts that fit, the report folder), run once on the F16:
    every candidate has its vocabulary and chat template."""
    from convert.common.fsutil import refuse_foreign_folder, refuse_own_input
    from runtime.evaluate import prepare

    _refuse_unread(settings)
    refuse_own_input(out_dir, {"F16 model": f16, "eval data": data, "probe text": settings.probe})
    try:
        refuse_foreign_folder(out_dir, what="an edgeft quant sweep folder", markers=(SWEEP_FILES["report"],),
                              advice="choose another <out_dir> or empty it yourself")
    except EdgeftError as exc:
        raise SettingError(str(exc), "out_dir") from None
    run = prepare(f16, data, out_dir / "eval-check", replace(settings, reference=f16))
    if hasattr(run.scorer, "close"):
        run.scorer.close()


def check_request(f16, data, out_dir: Path, settings: EvalSettings, *, quants) -> Path:
    """What can be refused before an imatrix is computed: the F16, the list of types, the settings, the eval data
    and metric, the output folder. Returns the F16's path."""
    from runtime.load import check_gguf
    from runtime.quant_choice import check_tolerance

    f16 = check_gguf(f16)
    parse_quants(quants)
    check_tolerance(settings.quant_tolerance)
    _check_inputs(f16, data, Path(out_dir), settings)
    return f16


def _scores(report: dict) -> list[float]:
    predictions = Path(report["outputs"]["predictions.jsonl"])
    with open(predictions, encoding="utf-8") as handle:
        return [json.loads(line)["model_score"] for line in handle if line.strip()]


def _measure_one(candidate: Candidate, f16: Path, data, work: Path, settings: EvalSettings, importance,
                 log: Callable[[str], None]) -> dict:
    """Quantize, evaluate, time one candidate; its row of the table."""
    from convert.quant.gguf_io import quantize_gguf
    from runtime.evaluate import run_eval
    from runtime.throughput import measure

    path, started = work / candidate.file, time.perf_counter()
    quantize_gguf(f16, path, candidate.type, imatrix=importance, threads=settings.threads)
    quantized = time.perf_counter()
    report = run_eval(path, data, work / f"eval-{candidate.type}", replace(settings, reference=f16, speed=False))
    evaluated = time.perf_counter()
    speed = measure(path, n_prompt=settings.bench_prompt, n_gen=settings.bench_gen, threads=SPEED_THREADS,
                    repeat=settings.bench_repeat)
    quality = report["quantization"]
    row = {"type": candidate.type, "file": candidate.file, "bytes": path.stat().st_size,
           "bits_per_weight": model_facts(path)["bits_per_weight"], "scores": _scores(report),
           "kld_mean": quality["kld_mean"], "top1_agreement": quality["top1_agreement"],
           "delta_ppl": quality["delta_ppl"], "pp_tok_s": speed["pp_tok_s"], "tg_tok_s": speed["tg_tok_s"],
           "speed_threads": SPEED_THREADS, "eval": f"eval-{candidate.type}",
           "seconds": {"quantize": quantized - started, "eval": evaluated - quantized,
                       "speed": time.perf_counter() - evaluated}}
    log(f"{candidate.type}: {row['bytes'] / 1e6:.1f} MB, {report['metric']} "
        f"{report['scores']['model']['mean'] * 100:.1f}%, KLD {row['kld_mean']:.4f}, tg {row['tg_tok_s']:.0f} tok/s")
    return row


def summarize(rows: list[dict], tolerance: float, max_kld: float | None = None) -> dict:
    """The choice, each row's difference to the highest-precision file (the largest), and the frontier."""
    from runtime.quant_report import frontier
    from runtime.stats import paired_difference

    choice = choose_quant(rows, tolerance, max_kld=max_kld)
    reference = max(choice["rows"], key=lambda row: row["bytes"])
    for row in choice["rows"]:
        row["vs_reference"] = paired_difference(row["scores"], reference["scores"])
    on_frontier = frontier(choice["rows"])
    for row in choice["rows"]:
        row["frontier"] = row["type"] in on_frontier
    return {"reference": reference["type"], **choice}


def run_sweep(f16: str | os.PathLike, data: str | os.PathLike, out_dir: str | os.PathLike,
              settings: EvalSettings | None = None, *, quants: str | Sequence[str] = "auto",
              imatrix: str | os.PathLike | None = None, max_kld: float | None = None,
              log: Callable[[str], None] | None = None) -> dict:
    """Quantize `f16` to each of `quants` ("auto" or llama.cpp names), score each on `data` as the shipped file's
    eval does, and write the files, one eval report per type (eval-TYPE/), quants.json, quants.md and quants.png
    into `out_dir` (which appears whole when done). `max_kld`: a release's gate, which the shipped file must pass
    too (runtime.quant_choice). Returns quants.json's content with `outputs`."""
    from convert.output_space import check_room
    from convert.quant import load_imatrix
    from convert.common.fsutil import atomic_dir
    from runtime.quant_report import write_outputs

    settings, out_dir, log = settings or EvalSettings(), Path(out_dir), log or _stderr
    f16 = check_request(f16, data, out_dir, settings, quants=quants)
    importance = load_imatrix(imatrix) if imatrix is not None else None
    candidates, left_out = plan_sweep(f16, quants, importance, f16.stem.removesuffix("-F16").removesuffix("-f16"))
    for skipped in left_out:
        log(f"{skipped['type']}: left out of auto ({skipped['reason']})")
    check_room(out_dir / candidates[0].file, sum(c.planned_bytes for c in candidates))
    started = time.perf_counter()
    with atomic_dir(out_dir, overwrite=True) as work:
        rows = [_measure_one(c, f16, data, work, settings, importance, log) for c in candidates]
        report = {"model": str(f16), "data": str(data), "metric": settings.metric,
                  "imatrix": str(imatrix) if imatrix else None, "settings": settings.report_section(),
                  "seconds": time.perf_counter() - started, "left_out": left_out,
                  **summarize(rows, settings.quant_tolerance, max_kld)}
        write_outputs(report, work)
    report["outputs"] = {name: str(out_dir / name) for name in SWEEP_FILES.values()}
    return report


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
