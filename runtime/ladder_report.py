"""The ladder as people read it: a report.md section, console lines, and the eval.png panels (score with 95%
interval per rung and the fine-tune; prompt tokens and time per request)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from runtime.stats import shown_interval
from runtime.verdict import rung_mark


def _number(value, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def tax_sentence(tax: dict) -> str:
    """What the fine-tune saves per request (and per day) against the rung it is compared with; report.md, the
    terminal and the card say it this way."""
    tokens = tax.get("tokens_per_request")
    if tokens is not None and tokens < 0:  # "a tax of -40 tokens" read as a saving
        slower = None if tax.get("ttft_ms_per_request") is None else -tax["ttft_ms_per_request"]
        timing = "" if slower is None else \
            f" (time to first token {_number(abs(slower), 1)} ms {'longer' if slower >= 0 else 'shorter'} per request)"
        return (f"No prompt tax saved: the fine-tune's own prompt is {_number(-tokens)} tokens longer than "
                f"{tax['label']}'s{timing}.")
    text = (f"Prompt tax of {tax['label']} over the fine-tune: {_number(tokens)} prompt tokens and "
            f"{_number(tax.get('ttft_ms_per_request'), 1)} ms of prompt processing (time to first token) per request "
            f"(total time per request {_number(tax.get('total_ms_per_request'), 1)} ms, answers included)")
    if tax.get("requests_per_day"):
        text += (f"; at {_number(tax['requests_per_day'])} requests a day, {_number(tax.get('tokens_per_day'))} tokens "
                 f"and {_number(tax.get('hours_per_day'), 2)} hours of prompt processing a day")
    return text + "."


def _cost_cells(row: dict) -> str:
    return f"{_number(row['prompt_tokens'], 1)} | {_number(row['ttft_ms'], 1)} | {_number(row['total_ms'], 1)}"


def ladder_markdown(ladder: dict) -> list[str]:
    lines = ["", "## The baseline ladder (the base GGUF, same quant, decoding and metric)", "",
             "| rung | score % [95%] n | fine-tune − rung, points [95%] n | prompt tokens/request "
             "| time to first token ms | total ms/request |", "|---|---|---|---|---|---|"]
    for row in ladder["rungs"]:
        mark = rung_mark(ladder, row["key"])
        name = f"**{row['label']}** ({mark})" if mark else row["label"]
        lines.append(f"| {name} | {shown_interval(row['score'])} | {shown_interval(row['difference'], points=True)} | "
                     f"{_cost_cells(row)} |")
    own = ladder["finetune"]
    lines.append(f"| fine-tune (its own short prompt) | {shown_interval(own['score'])} | — | {_cost_cells(own)} |")
    lines += ["", f"**Verdict: {ladder['verdict']['text']}.**", "", tax_sentence(ladder["prompt_tax"])]
    if ladder.get("fixed_shots"):
        lines += ["", f"Fixed shots (chosen once to cover the training data): training lines "
                      f"{', '.join(str(line) for line in ladder['fixed_shots'])}."]
    wall = ladder.get("wall_s") or {}
    lines += ["", f"Times per request are medians over {own['timed_requests']} requests per rung, each alone from an "
                  "empty cache and one token per decode step, as llama.cpp serves by default. Every answer is the "
                  "one llama.cpp gives the request alone, bit for bit (answer tokens decoded beside other requests "
                  "only where that changes no bit: "
                  f"{(ladder.get('decoding') or {}).get('tokens_batched', 0)} tokens; none decoded again), so the "
                  f"scores are what the GGUF answers. The ladder ran in one load of the base: "
                  f"{_number(wall.get('ladder'), 1)} s."]
    return lines


def ladder_lines(ladder: dict) -> list[str]:
    """For the terminal: one line per rung and the fine-tune, then the verdict."""
    lines = []
    for row in [*ladder["rungs"], ladder["finetune"]]:
        mark = rung_mark(ladder, row["key"])
        label = row["label"] + (f" ({mark})" if mark else "")
        lines.append(f"  {label:<30} {shown_interval(row['score']):<28} {_number(row['prompt_tokens'], 0):>6} "
                     f"prompt tokens, {_number(row['ttft_ms'], 1)} ms to first token, {_number(row['total_ms'], 1)} ms "
                     "per request")
    lines.append(f"verdict: {ladder['verdict']['text']}")
    lines.append(tax_sentence(ladder["prompt_tax"]))
    return lines


def plot_ladder(report: dict, path: Path) -> None:
    """Left: score with 95% interval per rung and the fine-tune. Right: prompt tokens and total ms per request."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder = report["ladder"]
    rows = [*ladder["rungs"], ladder["finetune"]]
    names = [textwrap.fill(row["label"], 13) for row in rows]
    means = [row["score"]["mean"] * 100 for row in rows]
    errors = [[max(0.0, (r["score"]["mean"] - r["score"]["low"]) * 100) for r in rows],
              [max(0.0, (r["score"]["high"] - r["score"]["mean"]) * 100) for r in rows]]
    colors = ["#555555" if r["key"] == ladder["strongest"] else "#aaaaaa" for r in ladder["rungs"]] + ["#2a7ab0"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=120)
    left.bar(range(len(rows)), means, yerr=errors, capsize=5, color=colors)
    left.set_xticks(range(len(rows)), names, fontsize=7)
    left.set_ylim(0, max(10.0, max(m + e for m, e in zip(means, errors[1])) * 1.1))
    left.set_ylabel(f"{report['metric'].split(':', 1)[0]} (%)")
    left.set_title(f"score, 95% intervals (n={report['n']})", fontsize=9)
    for x, mean in enumerate(means):
        left.annotate(f"{mean:.1f}", (x, 0), ha="center", va="bottom", fontsize=8, xytext=(0, 3),
                      textcoords="offset points", color="white" if mean > 4 else "black")
    tokens = [row["prompt_tokens"] or 0.0 for row in rows]
    right.bar(range(len(rows)), tokens, color=colors)
    right.set_xticks(range(len(rows)), names, fontsize=7)
    right.set_ylabel("prompt tokens per request")
    right.set_title("cost per request (label: total ms)", fontsize=9)
    for x, row in enumerate(rows):
        right.annotate(_number(row["total_ms"], 1), (x, tokens[x]), ha="center", va="bottom", fontsize=8)
    figure.suptitle(f"{Path(report['model']).name}: {ladder['verdict']['text']}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
