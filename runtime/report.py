"""Eval outputs: the typed report (`EvalReport`) and its files: report.json (everything, machine-readable),
report.md (tables), review.md (50 side-by-side samples for a human), eval.png (fine-tune vs baseline bars with
bootstrap intervals), predictions.jsonl."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path

REVIEW_SAMPLES = 50
# The files an eval writes into its -o folder, by what they hold: the one spelling of their names. report["outputs"]
# maps each name to its path; the fleet eval (runtime.fleet_eval) writes no review and no plot.
EVAL_FILES = {"report": "report.json", "markdown": "report.md", "review": "review.md", "plot": "eval.png",
              "predictions": "predictions.jsonl"}
FLEET_FILES = ("report", "markdown", "predictions")


@dataclass
class EvalReport:
    """report.json, typed: the scores from the answers, one section per measurement (runtime.measurements;
    None: not measured, left out of the JSON), then the gates."""

    model: str
    baseline: str | None
    data: str
    metric: str
    n: int
    settings: dict
    scores: dict  # {"model": interval, "baseline": the strongest rung's interval}
    difference: dict | None  # fine-tune minus the strongest rung
    ladder: dict | None = None
    judge: dict | None = None
    probe: dict | None = None
    preference: dict | None = None
    quantization: dict | None = None
    parity: dict | None = None
    tensor_types: dict | None = None
    throughput: dict | None = None
    gates: list[dict] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    passed: bool = True

    def as_dict(self) -> dict:
        """The JSON form, keys in field order; an optional section that was not measured is absent."""
        always = {"model", "baseline", "data", "metric", "n", "settings", "scores", "difference", "gates",
                  "failed_gates", "passed"}
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name in always or getattr(self, f.name) is not None}


def _pct(value) -> str:
    return "—" if value is None else f"{value * 100:.1f}"


def _num(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}g}"


def _interval(stats: dict, points: bool = False) -> str:
    from runtime.stats import shown_interval

    return shown_interval(stats, points=points)


def write_json(report: dict, path: Path) -> None:
    path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


def write_predictions(rows: list[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _scores_markdown(report: dict) -> list[str]:
    scores = report["scores"]
    lines = ["## Task score (%, 95% bootstrap interval, n examples)", "", "| system | score [95%] n |", "|---|---|",
             f"| fine-tune `{Path(report['model']).name}` | {_interval(scores['model'])} |"]
    if scores.get("baseline"):
        settings = report["settings"]
        how = f"system prompt: {'yes' if settings.get('system') else 'no'}, {settings.get('shots', 0)} shots"
        if report.get("ladder"):
            from runtime.verdict import compared_label

            ladder = report["ladder"]
            how = ("best rungs: " if ladder.get("tied") else "strongest rung: ") + compared_label(ladder)
        lines.append(f"| baseline `{Path(report['baseline']).name}` ({how}) | {_interval(scores['baseline'])} |")
    if report.get("difference"):
        difference = report["difference"]
        lines += ["", f"**Difference (fine-tune − baseline): {_interval(difference, points=True)} points**, "
                      f"bootstrap P(not better) = {difference.get('p_not_better', float('nan')):.3f}."]
    return lines


def _ladder_markdown(report: dict) -> list[str]:
    from runtime.ladder_report import ladder_markdown

    return ladder_markdown(report["ladder"])


def _judge_markdown(report: dict) -> list[str]:
    return ["", f"Judge verdicts that could not be parsed (counted as 0): {report['judge']['unparsed']}."]


def _preference_markdown(report: dict) -> list[str]:
    section = report["preference"]
    lines = ["", "## Preference pairs", "", f"Pairs `{section['pairs']}` (n={section['n']}): a pair is preferred when "
             "log p(chosen) > log p(rejected) over the answer tokens, through llama.cpp.", "",
             "| system | preference accuracy % (95% CI) | mean margin, nats (95% CI) |", "|---|---|---|"]
    for who in ("model", "baseline"):
        if section.get(who):
            margin = section[who]["margin"]
            lines.append(f"| {who} | {_interval(section[who]['accuracy'])} | {margin['mean']:+.3f} "
                         f"[{margin['low']:+.3f}, {margin['high']:+.3f}] |")
    if section.get("gain"):
        lines += ["", f"Gain in preference accuracy fine-tune - base: **{_interval(section['gain'], points=True)} "
                      "points**"]
    return lines


def _probe_markdown(report: dict) -> list[str]:
    probe = report["probe"]
    lines = ["", "## Forgetting probe", "", f"Text: {probe['text']}", "", "| system | perplexity | tokens |",
             "|---|---|---|"]
    for who in ("model", "baseline"):
        if probe.get(who):
            lines.append(f"| {who} | {_num(probe[who]['ppl'])} | {probe[who]['n_tokens']} |")
    if probe.get("ppl_ratio") is not None:
        lines += ["", f"Perplexity ratio fine-tune/base: **{probe['ppl_ratio']:.4f}**"]
    if probe.get("choices"):
        lines += ["", "| multiple choice | accuracy | accuracy (per char) | n |", "|---|---|---|---|"]
        for who, result in probe["choices"].items():
            lines.append(f"| {who} | {_pct(result['accuracy'])} | {_pct(result['accuracy_norm'])} | {result['n']} |")
    return lines


def _quantization_markdown(report: dict) -> list[str]:
    quality = report["quantization"]
    columns = ("mean KLD", "median KLD", "p99 KLD", "max KLD", "top-1 agreement %", "ppl", "ppl (reference)", "Δppl",
               "tokens")
    return ["", f"## Quantization quality vs `{Path(quality['reference']).name}`", "",
            "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            f"| {_num(quality['kld_mean'])} | {_num(quality['kld_median'])} | {_num(quality['kld_p99'])} | "
            f"{_num(quality['kld_max'])} | {quality['top1_agreement']:.2f} | {_num(quality['ppl_model'])} | "
            f"{_num(quality['ppl_reference'])} | {_num(quality['delta_ppl'])} | {quality['n_tokens']} |"]


def _parity_markdown(report: dict) -> list[str]:
    parity = report["parity"]
    lines = ["", f"## HF parity (`{parity['hf']}`)", "",
             f"Template renders identically: {parity['template_matches']}/{parity['n']}; "
             f"token ids identical: {parity['token_matches']}/{parity['n']}."]
    if parity.get("first"):  # reports written before the check named its first mismatch have none
        lines += ["", f"First mismatch: {parity['first']}", ""]
    for mismatch in parity["mismatches"]:
        details = {k: v for k, v in mismatch.items() if k != "example"}
        lines.append(f"- example {mismatch['example']}: `{json.dumps(details, ensure_ascii=False)}`")
    return lines


def _throughput_markdown(report: dict) -> list[str]:
    speed = report["throughput"]
    lines = ["", "## Throughput (median tok/s)", "",
             "| system | pp tok/s | tg tok/s | load s | size MiB | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for who in ("model", "baseline"):
        row = speed.get(who)
        if row:
            lines.append(f"| {who} | {_num(row['pp_tok_s'])} | {_num(row['tg_tok_s'])} | {row['load_s']:.2f} | "
                         f"{row['size_mib']:.1f} | {row['peak_rss_mib']:.0f} |")
    if speed.get("ratio"):
        ratio = speed["ratio"]
        lines += ["", f"Speed ratio fine-tune/base: pp {_num(ratio['pp'])}, tg {_num(ratio['tg'])}"]
    return lines


def _tensor_types_markdown(report: dict) -> list[str]:
    types = report["tensor_types"]
    if types["same"]:
        return ["", "Tensor types: every tensor is stored in the same type as in the baseline."]
    return ["", f"Tensor types: **{types['n_differing']} tensors differ from the baseline's** "
                f"({types['n_only_in_model']} only in the fine-tune); a different type changes speed and size:",
            ""] + [f"- `{d['tensor']}`: {d['model']} (baseline {d['baseline']})" for d in types["differing"]]


def _gates_markdown(report: dict) -> list[str]:
    gates = report["gates"]
    failed = [row["gate"] for row in gates if not row["passed"]]
    return (["", "## Gates", ""] + [f"- {'✅' if row['passed'] else '❌'} {row['text']}" for row in gates]
            + ["", f"**Gates failed: {', '.join(failed)}**" if failed else "**All gates passed.**"])


# report.md in order: a report section (present and non-empty) -> its markdown lines.
MARKDOWN_SECTIONS = (("scores", _scores_markdown), ("ladder", _ladder_markdown), ("judge", _judge_markdown),
                     ("probe", _probe_markdown), ("preference", _preference_markdown),
                     ("quantization", _quantization_markdown),
                     ("parity", _parity_markdown), ("throughput", _throughput_markdown),
                     ("tensor_types", _tensor_types_markdown), ("gates", _gates_markdown))


def render_markdown(report: dict) -> str:
    lines = [f"# Eval: {Path(report['model']).name}", "",
             f"Data `{report['data']}` ({report['n']} examples), metric `{report['metric']}`, greedy, "
             f"max {report['settings']['max_tokens']} new tokens.", ""]
    for section, render in MARKDOWN_SECTIONS:
        if report.get(section):
            lines += render(report)
    return "\n".join(lines) + "\n"


def _block(text: str) -> str:
    fence = "````" if "```" in text else "```"
    return f"{fence}\n{text.strip()}\n{fence}"


def render_review(rows: list[dict], *, has_baseline: bool) -> str:
    """Disagreements first (that is where a human learns something), then the rest, up to 50, in file order."""
    disagreements = [r for r in rows if has_baseline and r["model_score"] != r.get("baseline_score")]
    others = [r for r in rows if r not in disagreements]
    chosen = sorted((disagreements + others)[:REVIEW_SAMPLES], key=lambda r: r["line"])
    lines = [f"# Review: {len(chosen)} samples side by side", "",
             f"{len(disagreements)} of {len(rows)} examples were scored differently for fine-tune and baseline; "
             "they are included first.", ""]
    for index, row in enumerate(chosen, 1):
        verdict = f"fine-tune {row['model_score']:.2f}"
        if has_baseline:
            verdict += f", base {row['baseline_score']:.2f}"
        lines += [f"## {index}. line {row['line']} — {verdict}", "", "**Prompt**", "", _block(row["question"]), "",
                  "**Gold**", "", _block(row["gold"]), ""]
        if has_baseline:
            lines += [f"**Base** {('— ' + row['baseline_note']) if row.get('baseline_note') else ''}", "",
                      _block(row["baseline"]), ""]
        lines += [f"**Fine-tune** {('— ' + row['model_note']) if row.get('model_note') else ''}", "",
                  _block(row["prediction"]), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Bars with bootstrap intervals: fine-tune vs baseline score, and their difference (with a ladder: every rung,
    and the cost per request)."""
    if report.get("ladder"):
        from runtime.ladder_report import plot_ladder

        return plot_ladder(report, path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = report["scores"]
    names, means, lows, highs, colors = [], [], [], [], []
    for who, label, color in (("model", "fine-tune", "#2a7ab0"), ("baseline", "baseline", "#999999")):
        if scores.get(who):
            names.append(label)
            means.append(scores[who]["mean"] * 100)
            lows.append(scores[who]["mean"] * 100 - scores[who]["low"] * 100)
            highs.append(scores[who]["high"] * 100 - scores[who]["mean"] * 100)
            colors.append(color)
    if report.get("difference"):
        difference = report["difference"]
        names.append("difference")
        means.append(difference["mean"] * 100)
        lows.append((difference["mean"] - difference["low"]) * 100)
        highs.append((difference["high"] - difference["mean"]) * 100)
        colors.append("#3a9a50" if difference["low"] > 0 else "#c05040")
    figure, axis = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    axis.bar(names, means, yerr=[lows, highs], capsize=6, color=colors)
    axis.axhline(0, color="black", linewidth=0.6)
    axis.set_ylabel(f"{report['metric']} (%)")
    axis.set_title(f"{Path(report['model']).name}: n={report['n']}, 95% intervals", fontsize=9)
    for x, mean in enumerate(means):
        # Inside the bar, by its base: above the bar top the label would collide with the interval's whisker.
        axis.annotate(f"{mean:.1f}", (x, 0), ha="center", va="bottom" if mean >= 0 else "top", fontsize=8,
                      color="white" if abs(mean) > 4 else "black", xytext=(0, 3 if mean >= 0 else -3),
                      textcoords="offset points")
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def write_all(report: dict, rows: list[dict], out_dir: Path) -> dict[str, Path]:
    """Write the five files into `out_dir` (already a temporary folder; the caller renames it into place)."""
    paths = {role: out_dir / name for role, name in EVAL_FILES.items()}
    write_json(report, paths["report"])
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths["review"].write_text(render_review(rows, has_baseline=bool(report.get("baseline"))), encoding="utf-8")
    plot(report, paths["plot"])
    write_predictions(rows, paths["predictions"])
    return {EVAL_FILES[role]: path for role, path in paths.items()}
