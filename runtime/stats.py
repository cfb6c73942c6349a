"""Bootstrap confidence intervals, paired: both systems answered the same questions, so we resample questions
(not each system separately). That keeps the interval of the *difference* as tight as the data allows."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def mean_interval(scores: Sequence[float], *, confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> dict:
    """Mean with a percentile bootstrap interval; values in the units of `scores`."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    return {"mean": float(values.mean()), "low": float(np.percentile(means, tail)),
            "high": float(np.percentile(means, 100 - tail)), "n": int(values.size)}


def paired_difference(model_scores: Sequence[float], baseline_scores: Sequence[float], *,
                      confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict:
    """Mean of (model - baseline) over the same examples with a paired bootstrap interval, and the share of
    resamples in which the model did not win (a one-sided bootstrap p-value)."""
    model = np.asarray(model_scores, dtype=np.float64)
    baseline = np.asarray(baseline_scores, dtype=np.float64)
    if model.shape != baseline.shape:
        raise ValueError(f"paired scores differ in length: {model.shape} vs {baseline.shape}")
    result = mean_interval(model - baseline, confidence=confidence, resamples=resamples, seed=seed)
    if model.size:
        rng = np.random.default_rng(seed)
        means = (model - baseline)[rng.integers(0, model.size, size=(resamples, model.size))].mean(axis=1)
        result["p_not_better"] = float((means <= 0).mean())
    result["confidence"] = confidence
    return result


def shown_interval(stats: dict | None, *, points: bool = False) -> str:
    """An interval as every report prints it, with the sample size beside it: `60.0 [53.0, 67.0] n=40` (percent),
    or `+5.0 [+1.0, +9.0] n=40` (points, signed). A bootstrap over a handful of examples gives a narrow interval
    that means little; n says how much to trust it. "—" for what was not measured."""
    if not stats or stats.get("mean") is None or stats["mean"] != stats["mean"]:
        return "—"
    form = "+.1f" if points else ".1f"
    low, high = (format(100 * stats[key], form) for key in ("low", "high"))
    return f"{format(100 * stats['mean'], form)} [{low}, {high}] n={stats.get('n', '?')}"
