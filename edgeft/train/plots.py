"""loss.png: train and held-out loss against the optimizer step, drawn from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from convert.common.fsutil import atomic_file


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_loss(metrics_path: Path, out_path: Path, title: str = "edgeft train") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", linewidth=1.2)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", linewidth=1.5)
        best_step, best_loss = min(evals, key=lambda point: point[1])
        ax.axvline(best_step, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"best {best_loss:.3f}", (best_step, best_loss), textcoords="offset points", xytext=(5, 8))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    with atomic_file(out_path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_path)
