"""The release's figures, gathered from the stage outputs into the flat shape the manifest and card use.

Fractions stay fractions (0.62 = 62%); the card formats them. Anything not measured is None, never a guess.
"""

from __future__ import annotations

import json
from pathlib import Path


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping


def task_metrics(report: dict, quant: str) -> dict:
    difference = report.get("difference") or {}
    settings = report.get("settings") or {}
    shots = settings.get("shots") or 0
    setup = ("system prompt" if settings.get("system") else "no system prompt") + (f" + {shots} examples" if shots else "")
    ladder = report.get("ladder")
    if ladder:
        from runtime.verdict import compared_label

        setup = compared_label(ladder) + (", the best rungs of the ladder" if ladder.get("tied") else
                                          ", the strongest rung of the ladder")
    return {
        "metric": (report.get("metric") or "").split(":", 1)[0],
        "n": report.get("n"),
        "quant": quant,
        "finetune": _get(report, "scores", "model", "mean"),
        "baseline": _get(report, "scores", "baseline", "mean"),
        "baseline_setup": setup,
        "delta": difference.get("mean"),
        "ci95": [difference["low"], difference["high"]] if "low" in difference else None,
        "p_not_better": difference.get("p_not_better"),
    }


def _ladder_row(row: dict, mark: str | None) -> dict:
    score = row["score"]
    return {"rung": row["label"], "score": score["mean"], "ci95": [score["low"], score["high"]], "n": score["n"],
            "prompt_tokens": row["prompt_tokens"], "ttft_ms": row["ttft_ms"], "total_ms": row["total_ms"],
            "mark": mark}


def ladder_metrics(report: dict) -> dict | None:
    """Every rung and the fine-tune with score, interval and cost per request; the verdict and the prompt tax."""
    ladder = report.get("ladder")
    if not ladder:
        return None
    from runtime.verdict import rung_mark

    rows = [_ladder_row(row, rung_mark(ladder, row["key"])) for row in ladder["rungs"]]
    return {"rows": rows + [_ladder_row(ladder["finetune"], None)], "verdict": ladder["verdict"]["text"],
            "earned": ladder["verdict"]["earned"], "prompt_tax": ladder["prompt_tax"]}


def forgetting_metrics(report: dict) -> dict:
    probe = report.get("probe") or {}
    return {"probe": probe.get("text"), "ppl_finetune": _get(probe, "model", "ppl"),
            "ppl_base": _get(probe, "baseline", "ppl"), "ratio": probe.get("ppl_ratio")}


def quantization_metrics(report: dict) -> dict:
    q = report.get("quantization") or {}
    top1 = q.get("top1_agreement")
    return {"reference": "F16", "kld": q.get("kld_mean"), "kld_p99": q.get("kld_p99"),
            "top1": None if top1 is None else top1 / 100.0, "delta_ppl": q.get("delta_ppl")}


def throughput_metrics(bench: dict) -> dict:
    settings = bench.get("settings") or {}
    rows = {who: {"pp": _get(bench, who, "pp_tok_s"), "tg": _get(bench, who, "tg_tok_s"),
                  "size_mib": _get(bench, who, "size_mib")} for who in ("finetune", "base")}
    threads = _get(bench, "finetune", "threads")
    text = (f"pp {settings.get('n_prompt')} tokens, tg {settings.get('n_gen')} tokens, median of "
            f"{settings.get('repeat')} runs, {threads} threads")
    return {**rows, "settings": text}


def training_metrics(adapter_dir: Path) -> dict:
    """The run's figures from its summary.json. The losses that describe the model are the held-out ones (last
    eval, best); `last_batch_loss` is one training batch's, which older summaries called `final_loss`."""
    summary_path = Path(adapter_dir) / "summary.json"
    if not summary_path.is_file():
        return {}
    summary = json.loads(summary_path.read_text())
    if "final_loss" in summary:  # an adapter trained before the rename (make release reuses finished stages)
        summary.setdefault("last_batch_loss", summary.pop("final_loss"))
    keep = ("method", "steps", "planned_steps", "last_eval_loss", "last_eval_step", "best_eval_loss", "best_step",
            "adapter_step", "last_batch_loss", "trainable_params", "total_params", "tokens_per_s", "train_seconds")
    return {key: summary.get(key) for key in keep if key in summary}


def quant_choice_metrics(sweep: dict) -> dict:
    """The quant sweep (runtime.quant_sweep) as the card shows it: the choice, its reason and every type's row,
    without the per-question scores (they stay in the sweep's quants.json)."""
    keep = ("type", "best", "reference", "tolerance", "max_kld", "reason", "metric", "left_out")
    return {**{key: sweep.get(key) for key in keep},
            "rows": [{key: value for key, value in row.items() if key != "scores"} for row in sweep["rows"]]}


def metrics_from_outputs(report: dict, bench: dict, adapter_dir: Path, *, quant: str) -> dict:
    parity = report.get("parity")
    return {
        "task": task_metrics(report, quant),
        "ladder": ladder_metrics(report),
        "forgetting": forgetting_metrics(report),
        "quantization": quantization_metrics(report),
        "throughput": throughput_metrics(bench),
        "training": training_metrics(adapter_dir),
        "parity": {k: v for k, v in parity.items() if not isinstance(v, (list, dict))} if isinstance(parity, dict) else None,
    }
