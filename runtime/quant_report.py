"""The quant sweep as people read it: quants.json, a markdown table (quants.md, and the card's section), and
quants.png, task score against file size with the frontier marked.

The frontier: the files no other file beats on both counts (smaller, or as small, and a higher score). Any file off
it is dominated: something smaller scores at least as well.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime.report import write_json

SWEEP_FILES = {"report": "quants.json", "markdown": "quants.md", "plot": "quants.png"}


def frontier(rows: list[dict]) -> list[str]:
    """Types on the score-vs-size frontier, smallest first: each scores above every smaller file."""
    on, best = [], float("-inf")
    for row in sorted(rows, key=lambda r: (r["bytes"], -r["score"]["mean"])):
        if row["score"]["mean"] > best:
            on.append(row["type"])
            best = row["score"]["mean"]
    return on


def _points(difference: dict) -> str:
    return f"{difference['mean'] * 100:+.1f} [{difference['low'] * 100:+.1f}, {difference['high'] * 100:+.1f}]"


def _speed(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def table_lines(report: dict) -> list[str]:
    """The per-type table (markdown), largest file first, the chosen one in bold."""
    lines = [f"| type | size MB | bits/weight | {report['metric']} % [95%] | vs {report['reference']} (points) | "
             "mean KLD | top-1 % | pp tok/s | tg tok/s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["rows"]:
        score = row["score"]
        name = f"**{row['type']}**" if row["type"] == report["type"] else row["type"]
        mark = " ◆" if row.get("frontier") else ""
        lines.append(f"| {name}{mark} | {row['bytes'] / 1e6:.2f} | {row['bits_per_weight']:.2f} | "
                     f"{score['mean'] * 100:.1f} [{score['low'] * 100:.1f}, {score['high'] * 100:.1f}] | "
                     f"{_points(row['vs_reference'])} | {row['kld_mean']:.4f} | {row['top1_agreement']:.1f} | "
                     f"{_speed(row['pp_tok_s'])} | {_speed(row['tg_tok_s'])} |")
    return lines


def rule(report: dict) -> str:
    """The choice rule as the report and the card state it."""
    text = (f"the smallest file whose paired 95% interval against the best ({report['best']}) reaches "
            f"-{report['tolerance']:g} points or above")
    if report.get("max_kld") is not None:
        text += f", with a mean KLD vs F16 of at most {report['max_kld']:g} (the release's max_kld gate)"
    return text


def render_markdown(report: dict) -> str:
    n = report["rows"][0]["score"]["n"]
    lines = [f"# Which quant ships: {Path(report['model']).name}", "",
             f"{n} eval examples, metric `{report['metric']}`, greedy, each file scored as the shipped file's eval "
             f"scores it; imatrix: {report['imatrix'] or 'none'}. KLD and top-1 agreement against the F16; speed "
             f"with {report['rows'][0]['speed_threads']} thread. ◆: on the score-vs-size frontier.", "",
             *table_lines(report), "",
             f"**Ships: {report['reason']}**", "",
             f"Rule: {rule(report)}.", ""]
    for skipped in report.get("left_out") or []:
        lines.append(f"- {skipped['type']} left out: {skipped['reason']}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Task score (with its 95% interval) against file size; the frontier joined, the chosen file ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    figure, axis = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for row in rows:
        size, score = row["bytes"] / 1e6, row["score"]
        axis.errorbar(size, score["mean"] * 100, yerr=[[(score["mean"] - score["low"]) * 100],
                                                       [(score["high"] - score["mean"]) * 100]],
                      fmt="o", color="#2a7ab0" if row.get("frontier") else "#999999", capsize=3)
        axis.annotate(row["type"], (size, score["mean"] * 100), fontsize=7, xytext=(4, 3), textcoords="offset points")
    line = sorted((r for r in rows if r.get("frontier")), key=lambda r: r["bytes"])
    axis.plot([r["bytes"] / 1e6 for r in line], [r["score"]["mean"] * 100 for r in line], color="#2a7ab0",
              linewidth=1, label="frontier")
    chosen = next(r for r in rows if r["type"] == report["type"])
    axis.scatter([chosen["bytes"] / 1e6], [chosen["score"]["mean"] * 100], s=160, facecolors="none",
                 edgecolors="#c05040", linewidths=1.5, label=f"ships: {chosen['type']}", zorder=3)
    best = next(r for r in rows if r["type"] == report["best"])
    axis.axhline((best["score"]["mean"] * 100) - report["tolerance"], color="#c05040", linewidth=0.6, linestyle=":",
                 label=f"best - {report['tolerance']:g} points")
    axis.set_xlabel("file size (MB)")
    axis.set_ylabel(f"{report['metric']} (%)")
    axis.set_title(f"{Path(report['model']).name}: task score vs size, 95% intervals", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)


def write_outputs(report: dict, folder: Path) -> None:
    """quants.json, quants.md, quants.png into `folder` (the sweep's temporary folder, renamed when complete)."""
    write_json(report, folder / SWEEP_FILES["report"])
    (folder / SWEEP_FILES["markdown"]).write_text(render_markdown(report), encoding="utf-8")
    plot(report, folder / SWEEP_FILES["plot"])


def read_report(folder: Path) -> dict:
    return json.loads((Path(folder) / SWEEP_FILES["report"]).read_text(encoding="utf-8"))
