"""Which quant ships: the smallest file whose task score is not worse than the best file's beyond a tolerance.

Every candidate answered the same eval questions, so each is compared with the best-scoring file by a paired
bootstrap over those questions (runtime.stats.paired_difference). A candidate keeps the task when the upper end of
that difference's 95% interval reaches -tolerance or above, i.e. the data cannot show it is worse by more than
`tolerance` points. Of those, the smallest file ships. Scores need not fall with the bits: a Q4 that happens to
beat the Q5 is judged like any other file.

Example:
    choice = choose_quant([{"type": "Q8_0", "bytes": 145e6, "scores": [1, 1, 0, ...]}, ...], tolerance=2.0)
    choice["type"], choice["reason"]   # "IQ4_XS", "IQ4_XS: 92.5% vs 93.0% at Q8_0, 41% of its size (...)"
"""

from __future__ import annotations

import math
from typing import Sequence

from runtime.stats import mean_interval, paired_difference

DEFAULT_TOLERANCE = 2.0  # points: the paired 95% interval must include -2 points or better


def check_tolerance(value) -> float:
    """The tolerance in points, 0 or more (a number a recipe or a flag gave)."""
    from runtime.eval_settings import SettingError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SettingError(f"<quant_tolerance> {value!r}: must be a number of points, 0 or more (e.g. 2)",
                           "quant_tolerance")
    return float(value)


def _strength(indexed: tuple[int, dict]) -> tuple:
    """The best file: the highest mean score; a tie goes to the larger file (the higher precision), then the
    earlier row."""
    index, row = indexed
    mean = row["score"]["mean"]
    return (-math.inf if mean != mean else mean, row["bytes"], -index)


def _rank_for_shipping(row: dict) -> tuple:
    """Smallest first; at equal size the higher score, then the earlier row (the caller's order)."""
    mean = row["score"]["mean"]
    return (row["bytes"], -(mean if mean == mean else -math.inf))


def choose_quant(rows: Sequence[dict], tolerance: float = DEFAULT_TOLERANCE, *, max_kld: float | None = None) -> dict:
    """`rows`: one per candidate with `type`, `bytes` (file size) and `scores` (per eval question, 0..1, the same
    questions in the same order for every row). Returns {"type", "best", "tolerance", "max_kld", "reason", "rows"},
    where each row gains `score` (mean with its 95% interval), `vs_best` (paired difference to the best file) and
    `keeps` (within the tolerance). `max_kld` (a release's gate on the shipped file): a row whose `kld_mean` is above
    it cannot ship, however well it scores; when no kept file is under it, the best ships and the gate decides."""
    if not rows:
        raise ValueError("choose_quant: no candidates")
    tolerance = check_tolerance(tolerance)
    scored = [{**row, "score": mean_interval(row["scores"])} for row in rows]
    best = max(enumerate(scored), key=_strength)[1]
    for row in scored:
        row["vs_best"] = paired_difference(row["scores"], best["scores"])
        row["keeps"] = row is best or row["vs_best"]["high"] * 100 >= -tolerance - 1e-9
    over = [row for row in scored if max_kld is not None and row["kld_mean"] > max_kld]
    shippable = [row for row in scored if row["keeps"] and row not in over] or [best]
    chosen = min(shippable, key=_rank_for_shipping)
    reason = choice_reason(chosen, best, tolerance)
    passed_over = [row["type"] for row in over if row["keeps"] and row["bytes"] < chosen["bytes"]]
    if passed_over:
        reason += f"; {', '.join(passed_over)} kept the score with a mean KLD above max_kld {max_kld:g}"
    return {"type": chosen["type"], "best": best["type"], "tolerance": tolerance, "max_kld": max_kld,
            "reason": reason, "rows": scored}


def choice_reason(chosen: dict, best: dict, tolerance: float) -> str:
    """One line for the card: "IQ4_XS: 92.5% vs 93.0% at Q8_0, 41% of its size (...)"."""
    own = chosen["score"]["mean"] * 100
    if chosen is best or chosen["type"] == best["type"]:
        return (f"{chosen['type']}: {own:.1f}%, the best task score; no smaller file kept it within {tolerance:g} "
                "points")
    difference = chosen["vs_best"]
    share = chosen["bytes"] / best["bytes"] * 100
    return (f"{chosen['type']}: {own:.1f}% vs {best['score']['mean'] * 100:.1f}% at {best['type']}, {share:.0f}% of "
            f"its size (paired 95% interval {difference['low'] * 100:+.1f} to {difference['high'] * 100:+.1f} "
            f"points; tolerance {tolerance:g})")
