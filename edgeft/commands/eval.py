"""`edgeft eval`: does the fine-tuned GGUF beat the prompted base, without forgetting, as fast?"""

from __future__ import annotations

import contextlib
import sys

import click

from runtime.eval_settings import DEFAULT_CONTEXT_K, EvalSettings
from runtime.report import EVAL_FILES

DEFAULTS = EvalSettings()  # the options' defaults, shown in their help; a flag not given is not passed on

GATE_FAILED_EXIT = 3  # distinct from 1 (bad input): the eval ran, the model did not pass


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=str))
@click.option("--data", required=True, type=click.Path(dir_okay=False, path_type=str),
              help="Eval conversations, JSONL; the last assistant turn of each is the gold answer.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help=f"Folder for {', '.join(EVAL_FILES.values())}.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Base GGUF to beat: it runs the whole ladder (zero-shot, fixed and retrieved --shots, --context).")
@click.option("--metric", default=None, help="exact | normalized | json-valid | json-match | regex:PAT | "
              f"sql-exec:DB.sqlite | judge:JUDGE.gguf (default {DEFAULTS.metric})")
@click.option("--rubric", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Rubric text file for --metric judge:JUDGE.gguf.")
@click.option("--system", default=None, help="System prompt for the baseline.")
@click.option("--shots", type=int, default=None,
              help=f"K for the fixed and the retrieved K-shot rungs (0: zero-shot only; default {DEFAULTS.shots}).")
@click.option("--shots-from", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Training JSONL the shots come from (fixed: K chosen to cover it; retrieved: BM25 per question).")
@click.option("--context", type=click.Path(dir_okay=False, path_type=str), default=None,
              help='Passages JSONL {"text": ...}: adds the retrieved-context rung (BM25, into the system prompt).')
@click.option("--context-k", type=int, default=None,
              help=f"Passages per question for --context (default {DEFAULT_CONTEXT_K}).")
@click.option("--requests-per-day", type=float, default=None,
              help="Traffic for the prompt tax per day (default: the recipe's eval.requests_per_day).")
@click.option("--latency-samples", type=int, default=None,
              help="Requests per rung timed one at a time from an empty cache (time to first token, total; default "
                   f"{DEFAULTS.latency_samples}).")
@click.option("--probe", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="General text for the forgetting probe (default: the text shipped with edgeft).")
@click.option("--choices", type=click.Path(dir_okay=False, path_type=str), default=None,
              help='Multiple-choice JSONL {"question", "choices", "answer"} scored by log-likelihood.')
@click.option("--pairs", type=click.Path(dir_okay=False, path_type=str), default=None,
              help='Preference pairs JSONL {"prompt", "chosen", "rejected"}: accuracy of log p(chosen) > '
                   "log p(rejected) for the fine-tune and the base, with intervals.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Higher-precision GGUF (F16) for KL-divergence / top-1 agreement / Δppl.")
@click.option("--hf", default=None,
              help="HF model folder or hub id: check the chat-rendered eval tokenizes identically (needs transformers).")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Recipe YAML whose eval.gates section sets gates (flags win).")
@click.option("--min-gain", type=float, default=None, help="Gate: beat the strongest rung by at least N points.")
@click.option("--require-earned", is_flag=True,
              help="Gate `earned`: the gain's 95% interval over the strongest rung must lie above 0.")
@click.option("--max-ppl-ratio", type=float, default=None, help="Gate: probe perplexity fine-tune/base at most P.")
@click.option("--min-pref-gain", type=float, default=None,
              help="Gate: preference accuracy on --pairs beats the base's by at least N points.")
@click.option("--max-kld", type=float, default=None, help="Gate: mean KL-divergence vs --reference at most K.")
@click.option("--min-speed-ratio", type=float, default=None, help="Gate: tg tok/s at least R x the base's (e.g. 0.95).")
@click.option("--max-tokens", type=int, default=None,
              help=f"Most new tokens per answer (default {DEFAULTS.max_tokens}).")
@click.option("--ctx", "n_ctx", type=int, default=None, help=f"Context size for generation (default {DEFAULTS.n_ctx}).")
@click.option("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice).")
@click.option("--limit", type=int, default=None, help="Evaluate only the first N examples.")
@click.option("--no-speed", is_flag=True, help="Skip the throughput comparison with the baseline.")
@click.option("--ladder-cache", type=click.Path(file_okay=False, path_type=str), default=None,
              help="Folder that keeps the baseline's ladder answers: an eval of another fine-tune against the same "
                   "base GGUF, data, shots and decoding settings reuses them instead of re-running every rung "
                   "(what `make release` keeps in OUT/ladder-cache).")
@click.option("--adapter", "adapters", multiple=True, metavar="NAME=ADAPTER.gguf",
              help="Score LoRA adapter GGUFs over MODEL (the base, loaded once) instead; repeat for a fleet.")
@click.option("--quants", default=None, metavar="TYPE,TYPE...|auto",
              help="MODEL is the F16 GGUF: quantize it to each type and score each on --data (size, bits/weight, "
                   "score, KLD, speed, the smallest that keeps the task); auto: Q8_0 Q6_K Q5_K_M Q4_K_M IQ4_XS "
                   "Q3_K_M IQ3_M Q2_K, from 1B weights also IQ3_XXS IQ2_M, from 13B IQ2_XS.")
@click.option("--imatrix", default=None, metavar="FILE|auto",
              help="With --quants: importance matrix for every type (IQ2_*, IQ3_XXS... need one); auto computes it "
                   "from --imatrix-data with the model's HF folder given by --hf.")
@click.option("--imatrix-data", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Calibration conversations (JSONL) for --imatrix auto: the training data.")
@click.option("--quant-tolerance", type=float, default=None,
              help=f"With --quants: points a smaller file may lose to the best (its paired 95% interval must reach "
                   f"-N or above; default: the recipe's eval.quant_tolerance, else {DEFAULTS.quant_tolerance:g}).")
def eval_command(model, data, out_dir, adapters, recipe, quants, imatrix, imatrix_data, ladder_cache, **options):
    """Evaluate MODEL.gguf on held-out conversations against a prompted baseline.

    Generates greedily with the GGUF's own chat template and scores with --metric. The baseline climbs a ladder
    (zero-shot, fixed K-shot, retrieved K-shot, retrieved context) and the fine-tune is compared with the strongest
    rung: scores with bootstrap intervals, prompt tokens, time to first token and total time per request, the
    prompt tax and a verdict. Also a forgetting probe, and optionally KLD vs a reference, HF parity and
    throughput. Exits with status 3 when a gate fails, naming it.

    \b
    Example:
      edgeft eval out/model-Q4_K_M.gguf --data eval.jsonl -o out/eval \\
        --baseline base-Q4_K_M.gguf --system "Answer with SQL only." --shots 3 --shots-from train.jsonl \\
        --metric sql-exec:shop.sqlite --reference out/model-f16.gguf --min-gain 5 --max-ppl-ratio 1.2
      edgeft eval base.gguf --adapter sql=sql.gguf --adapter faq=faq.gguf --data eval.jsonl -o out/fleet
      edgeft eval out/model-F16.gguf --quants auto --imatrix out/imatrix.gguf --data eval.jsonl -o out/quants
      edgeft eval out/try2-Q4_K_M.gguf --baseline base-Q4_K_M.gguf ... --ladder-cache out/ladder-cache
    """
    from runtime.eval_settings import SettingError

    if ladder_cache is not None and (quants is not None or adapters or options.get("baseline") is None):
        raise SettingError("<ladder_cache> keeps the baseline's ladder: it is read with <baseline> only (not with "
                           "<quants> or <adapters>)", "ladder_cache", "baseline", "quants", "adapters")
    if quants is not None:
        if adapters:
            raise SettingError("<quants> scores one model at several quants, not <adapters>", "quants", "adapters")
        return _sweep(model, data, out_dir, recipe, (quants, imatrix, imatrix_data), options)
    sweep_only = {"imatrix": imatrix, "imatrix_data": imatrix_data, "quant_tolerance": options.pop("quant_tolerance")}
    given = [name for name, value in sweep_only.items() if value is not None]
    if given:
        raise SettingError(f"<{given[0]}> is read with <quants> only (the quant sweep); add it or drop <{given[0]}>",
                           given[0], "quants")
    if adapters:
        return _fleet(model, adapters, data, out_dir, recipe, options)
    from runtime.evaluate import run_eval
    from runtime.ladder_cache import reusing_base_ladder

    settings = _settings(recipe, options)
    with reusing_base_ladder(ladder_cache) if ladder_cache else contextlib.nullcontext():
        report = run_eval(model, data, out_dir, settings)
    _print_report(report)
    if not report["passed"]:
        click.echo(f"Error: gate failed: {', '.join(report['failed_gates'])} (see {report['outputs'][EVAL_FILES['markdown']]})",
                   err=True)
        sys.exit(GATE_FAILED_EXIT)


def _setting_words(flags: dict[str, str]) -> dict[str, str]:
    """The settings no one flag of this command sets, in its words (edgeft.cli.flags names the rest)."""
    from runtime.gates import GATES

    gates = ", ".join([flags[name] for name in GATES if name in flags] + ["--require-earned", "--recipe eval.gates"])
    return {"speed": "the speed test (leave out --no-speed)", "gates": f"the gates ({gates})"}


eval_command.setting_words = _setting_words


RECIPE_READS = ("gates", "requests_per_day")  # what this command takes from a recipe's eval: section


def _settings(recipe, options: dict, *, resolve_hf: bool = True, reads: tuple[str, ...] = RECIPE_READS):
    """The command's options as EvalSettings: the flags given over the recipe's `reads` (its gates and traffic), over
    the defaults. `resolve_hf` False: --hf stays as given (the fleet refuses it; a hub id is not fetched first)."""
    from convert.common.errors import EdgeftError
    from runtime.eval_settings import SettingError, recipe_key
    from runtime.gates import GATES, recipe_eval, resolve_gates

    options = dict(options)
    flag_gates = {name: options.pop(name) for name in GATES if name in options}
    if options.pop("require_earned"):
        flag_gates["earned"] = GATES["earned"].default
    section = recipe_eval(recipe)
    try:  # a setting the recipe gave is named as the recipe's key, not as a flag
        from_recipe = EvalSettings.from_mapping({key: section[key] for key in reads if key in section},
                                                where=f"--recipe {recipe}")
    except SettingError as exc:
        raise EdgeftError(exc.named(recipe_key)) from None
    given = {name: value for name, value in options.items() if value is not None and name != "no_speed"}
    if options["no_speed"]:
        given["speed"] = False
    given["gates"] = resolve_gates(flag_gates, from_recipe.gates)
    if given.get("hf") is not None and resolve_hf:
        from edgeft.modelref import resolve_model

        given["hf"] = str(resolve_model(given["hf"]))
    return EvalSettings.from_mapping(given, base=from_recipe)


def _print_report(report: dict) -> None:
    from runtime.stats import shown_interval

    scores = report["scores"]
    line = f"{report['metric']}: fine-tune {scores['model']['mean'] * 100:.1f}%"
    if report.get("difference"):
        difference = report["difference"]
        line += (f", baseline {scores['baseline']['mean'] * 100:.1f}%, difference "
                 f"{shown_interval(difference, points=True)} points")
    click.echo(line)
    if report.get("ladder"):
        from runtime.ladder_report import ladder_lines

        for text in ladder_lines(report["ladder"]):
            click.echo(text)
    click.echo(f"report: {report['outputs'][EVAL_FILES['markdown']]}")
    for row in report["gates"]:
        click.echo(f"gate {row['text']}", err=not row["passed"])
    if (report.get("parity") or {}).get("first"):  # the one line that names the conversation and the token
        click.echo(f"HF parity: {report['parity']['first']}", err=True)


def _fleet(model, adapters, data, out_dir, recipe, options: dict) -> None:
    """--adapter: every adapter and the base scored over one load of MODEL (runtime.fleet_eval); the settings it
    does not read are refused there (EvalSettings.check), so every option goes in as given."""
    from edgeft.commands.serve import parse_adapters
    from runtime.fleet_eval import run_fleet_eval
    from runtime.stats import shown_interval

    settings = _settings(recipe, options, resolve_hf=False)
    report = run_fleet_eval(model, parse_adapters(adapters), data, out_dir, settings)
    for row in report["models"]:
        diff = row["difference_vs_base"]
        versus = "" if diff is None else f", vs base {shown_interval(diff, points=True)} points"
        click.echo(f"{row['model']}: {report['metric']} {row['score']['mean'] * 100:.1f}%{versus}")
    click.echo(f"report: {report['outputs'][EVAL_FILES['markdown']]}")


def _sweep(model, data, out_dir, recipe, sweep: tuple, options: dict) -> None:
    """--quants: the fine-tune's task score at each quant (runtime.quant_sweep), the tolerance from the flag or the
    recipe; --hf names the HF folder --imatrix auto computes from, so it is taken out of the eval settings."""
    from runtime.quant_report import table_lines
    from runtime.quant_sweep import check_request, run_sweep

    quants, imatrix, imatrix_data = sweep
    hf = options.pop("hf")
    settings = _settings(recipe, {**options, "hf": None}, resolve_hf=False, reads=("quant_tolerance",))
    check_request(model, data, out_dir, settings, quants=quants)
    report = run_sweep(model, data, out_dir, settings, quants=quants,
                       imatrix=_sweep_imatrix(imatrix, hf, imatrix_data, out_dir),
                       log=lambda line: click.echo(line, err=True))
    for line in table_lines(report):
        click.echo(line)
    click.echo(f"ships: {report['reason']}")
    click.echo(f"report: {report['outputs']['quants.md']}")


def _sweep_imatrix(spec, hf, data, out_dir):
    """--imatrix FILE as given; auto computed (once, cached beside the output) from the HF folder and the data."""
    from pathlib import Path

    from convert.common.errors import EdgeftError

    if spec is None:
        return None
    if str(spec).lower() != "auto":
        if not Path(spec).is_file():
            raise EdgeftError(f"--imatrix {spec}: file not found; pass an imatrix GGUF or --imatrix auto")
        return spec
    if hf is None or data is None:
        raise EdgeftError("--imatrix auto: no imatrix can be made without the model's HF folder and its training "
                          "data; add --hf MERGED_DIR --imatrix-data TRAIN.jsonl, or pass --imatrix FILE")
    from edgeft.imatrix import resolve_imatrix
    from edgeft.modelref import resolve_model

    return resolve_imatrix("auto", resolve_model(hf), data_path=data,
                           cache_dir=Path(out_dir).resolve().parent / ".edgeft-imatrix")
