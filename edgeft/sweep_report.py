"""The sweep's table (sweep.md) and picture (sweep.png): one row, one bar per trial; the winner marked."""

from __future__ import annotations

from pathlib import Path

from convert.common.fsutil import atomic_file


def _cell(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_table(path: Path, record: dict) -> Path:
    keys = list(record["grid"])
    lines = [f"# Sweep: {record['metric']} on the validation split", "",
             "| trial | " + " | ".join(keys) + " | score | best step | steps | sequences | train s |",
             "|---|" + "---:|" * (len(keys) + 5)]
    for row in record["trials"]:
        if "score" not in row:
            lines.append(f"| {row['name']} | " + " | ".join(_cell(row["settings"][k]) for k in keys) +
                         " | (not run yet) | | | | |")
            continue
        mark = " **winner**" if row["name"] == record["winner"] else ""
        lines.append(f"| {row['name']}{mark} | " + " | ".join(_cell(row["settings"][k]) for k in keys) +
                     f" | {100 * row['score']:.1f}% | {row['best_step']} | {row['steps']} | "
                     f"{row['steps'] * row['effective_batch']} | {row['train_seconds']:.0f} |")
    if record.get("not_run"):
        lines += ["", f"Not run (--max-trials or the time budget): {', '.join(record['not_run'])}"]
    lines += ["", "A tie in score goes to the trial that trained on fewer sequences, then to the earlier one."]
    with atomic_file(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_plot(path: Path, record: dict) -> Path | None:
    rows = [row for row in record["trials"] if "score" in row]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.5), dpi=100)
    colours = ["tab:green" if row["name"] == record["winner"] else "tab:grey" for row in rows]
    axis.barh([row["name"] for row in rows], [100 * row["score"] for row in rows], color=colours)
    axis.invert_yaxis()
    axis.set_xlabel(f"validation score, {record['metric']} (%)")
    axis.set_xlim(0, 100)
    axis.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
