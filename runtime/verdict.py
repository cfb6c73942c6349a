"""The ladder's verdict: which rung the fine-tune is judged against, and only what the numbers support saying.

Three things a verdict must not do: call one of several rungs with the same score "the strongest" (the rung compared
is then the cheapest of the tied ones, and the report says they tied); tell the user to ship a prompt that does not do
the task (a rung whose 95% interval reaches 0 has not been shown to score at all); and call a fine-tune that nothing
separates from zero "within the interval" of a prompt, as if the prompt were the answer. When no system scores
measurably above zero, the verdict says so and what to try next; over fewer eval examples than a 95% claim needs
(runtime.gates.MIN_EXAMPLES_FOR_SIGNIFICANCE) it claims nothing.

The functions are sections of runtime.ladder's summary table: each reads the rows computed before it.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.gates import MIN_EXAMPLES_FOR_SIGNIFICANCE

# What to try when nothing scores: the seed's three reasons a small base fails a task.
NEXT_STEPS = ("try a stronger base, retrieval (eval.context / --context) if the answers need knowledge the base "
              "lacks, or more or better training data")


def strongest_section(finetune, rungs, report: dict, options: dict) -> str:
    """The rung with the best score; a tie goes to the higher lower bound, then the shorter prompt, then the lower
    rung (the cheaper one to ship)."""
    rows = report["rungs"]

    def strength(indexed):
        index, row = indexed
        mean, low = row["score"]["mean"], row["score"]["low"]
        return (-np.inf if mean != mean else mean, -np.inf if low != low else low,
                -(row["prompt_tokens"] or 0.0), -index)

    return max(enumerate(rows), key=strength)[1]["key"]


def tied_section(finetune, rungs, report: dict, options: dict) -> list[str]:
    """The other rungs that score exactly what the strongest does: then none of them is "the strongest"."""
    best = _row(report, report["strongest"])["score"]["mean"]
    return [row["key"] for row in report["rungs"]
            if row["key"] != report["strongest"] and _same(row["score"]["mean"], best)]


def compared_label(ladder: dict) -> str:
    """How the rung the fine-tune is compared with is named: "retrieved 3-shot", or "zero-shot (tied with fixed
    3-shot)"."""
    label = _row(ladder, ladder["strongest"])["label"]
    tied = [_row(ladder, key)["label"] for key in ladder.get("tied") or []]
    return f"{label} (tied with {', '.join(tied)})" if tied else label


def rung_mark(ladder: dict, key: str) -> str | None:
    """What a table says beside a rung: "strongest", or for rungs with the same best score "tied best" (and which
    of them the fine-tune is compared with)."""
    tied = ladder.get("tied") or []
    if key == ladder["strongest"]:
        return "tied best, compared" if tied else "strongest"
    return "tied best" if key in tied else None


def verdict_section(finetune, rungs, report: dict, options: dict) -> dict:
    best = _row(report, report["strongest"])
    difference = best["difference"]
    earned = bool(difference["low"] > 0) and difference["n"] >= MIN_EXAMPLES_FOR_SIGNIFICANCE
    return {"earned": earned, "vs": best["key"],
            "text": verdict_text(compared_label(report), difference, report["prompt_tax"]["tokens_per_request"],
                                 finetune=report["finetune"]["score"], rung=best["score"])}


def verdict_text(label: str, difference: dict, tokens_saved: float | None, *, finetune: dict, rung: dict) -> str:
    """The seed's terms: earned (the whole 95% interval of the gain is above zero) or ship the prompt, the latter
    only for a prompt shown to score; otherwise what is known and what to try."""
    mean, low, high = (100 * difference[key] for key in ("mean", "low", "high"))
    interval = f"95% interval {low:+.1f} to {high:+.1f} points, n={difference['n']}"
    if difference["n"] == 0 or mean != mean:
        return f"not measured: no eval examples to compare the fine-tune with {label}"
    scores = f"the fine-tune scores {_score(finetune)} and {label} {_score(rung)}"
    if difference["n"] < MIN_EXAMPLES_FOR_SIGNIFICANCE:
        return (f"not shown: {difference['n']} eval examples are too few for a 95% claim (at least "
                f"{MIN_EXAMPLES_FOR_SIGNIFICANCE}); {scores} ({interval}); add held-out examples")
    if low > 0:
        fewer = "" if tokens_saved is None else \
            f", and {abs(tokens_saved):.0f} {'fewer' if tokens_saved >= 0 else 'more'} prompt tokens per request"
        return f"fine-tuning earned it: {mean:+.1f} points over {label}{fewer} ({interval})"
    if not _scores_anything(finetune) and not _scores_anything(rung):
        return f"nothing here does the task: {scores}, neither measurably above 0 — ship neither; {NEXT_STEPS}"
    if not _scores_anything(rung):
        return (f"not earned, and no prompt does the task either: {scores}, and no prompted rung is measurably above "
                f"0 ({interval}); more eval examples would tell them apart, or {NEXT_STEPS}")
    if high < 0:
        return f"not earned: {label} beats the fine-tune by {-mean:.1f} points — ship the prompt, not the weights " \
               f"({interval})"
    return f"not earned: {label} is within the interval — ship the prompt, not the weights " \
           f"(fine-tune {mean:+.1f} points, {interval})"


def _scores_anything(score: dict) -> bool:
    """Measurably above zero: the score's 95% interval excludes 0."""
    return bool(score["n"]) and score["low"] > 0


def _score(score: dict) -> str:
    return f"{100 * score['mean']:.1f}% [{100 * score['low']:.1f}, {100 * score['high']:.1f}]"


def _same(a: float, b: float) -> bool:
    return (a != a and b != b) or math.isclose(a, b, rel_tol=0, abs_tol=1e-12)


def _row(ladder: dict, key: str) -> dict:
    return next(row for row in ladder["rungs"] if row["key"] == key)
