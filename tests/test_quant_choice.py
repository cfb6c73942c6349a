"""The quant that ships: the smallest file whose paired 95% interval against the best file reaches -tolerance,
over fake score/size rows (no model): ties, a non-monotone score, the tolerance, the frontier, the reason line."""

from __future__ import annotations

import pytest

from convert.common.errors import EdgeftError
from runtime.quant_choice import choose_quant
from runtime.quant_report import frontier

N = 100  # eval questions


def correct(count: int, *, first: int = 0) -> list[float]:
    """Per-question scores: questions first..first+count-1 right, the rest wrong."""
    return [1.0 if first <= i < first + count else 0.0 for i in range(N)]


def rows(*spec) -> list[dict]:
    """(type, MB, right answers[, first right question]) -> rows as the sweep gives them."""
    return [{"type": t, "bytes": int(mb * 1e6), "scores": correct(k, first=f[0] if f else 0)} for t, mb, k, *f in spec]


# Against the best file, 2 questions lost keep a 2-point tolerance (the paired interval reaches 0), 10 lost do not
# (its upper end is below -4): every case stays clear of the boundary.
CASES = [
    ("falls with the bits: the smallest within 2 points",
     rows(("Q8_0", 145, 93), ("Q6_K", 112, 93), ("Q4_K_M", 84, 92), ("IQ4_XS", 60, 91), ("Q2_K", 45, 60)),
     2.0, "IQ4_XS", "Q8_0"),
    ("non-monotone: the best is a middle file, and a smaller one keeps it",
     rows(("Q8_0", 145, 80), ("Q5_K_M", 100, 95), ("Q4_K_M", 84, 94), ("Q3_K_M", 70, 80)),
     2.0, "Q4_K_M", "Q5_K_M"),
    ("non-monotone: a broken middle file is skipped, the smaller one after it ships",
     rows(("Q8_0", 145, 93), ("Q5_K_M", 100, 70), ("Q4_K_M", 84, 93), ("Q3_K_M", 70, 50)),
     2.0, "Q4_K_M", "Q8_0"),
    ("tie on score: the smaller of the two",
     rows(("Q8_0", 145, 90), ("Q6_K", 112, 90), ("Q2_K", 45, 40)),
     2.0, "Q6_K", "Q8_0"),
    ("tie on size: the higher score",
     rows(("Q8_0", 145, 90), ("Q4_0", 80, 89), ("IQ4_NL", 80, 90), ("Q2_K", 45, 40)),
     2.0, "IQ4_NL", "Q8_0"),
    ("tie on size and score: the earlier row",
     rows(("Q8_0", 145, 90), ("Q4_0", 80, 90), ("IQ4_NL", 80, 90)),
     2.0, "Q4_0", "Q8_0"),
    ("every file alike: the smallest",
     rows(("Q8_0", 145, 50), ("Q4_K_M", 84, 50), ("Q2_K", 45, 50)),
     2.0, "Q2_K", "Q8_0"),
    ("the smallest file is the best",
     rows(("Q8_0", 145, 80), ("Q4_K_M", 84, 82), ("Q2_K", 45, 85)),
     2.0, "Q2_K", "Q2_K"),
    ("nothing smaller keeps the task: the best ships",
     rows(("Q8_0", 145, 95), ("Q4_K_M", 84, 80), ("Q2_K", 45, 30)),
     2.0, "Q8_0", "Q8_0"),
    ("a wider tolerance lets the 10-question loss through",
     rows(("Q8_0", 145, 95), ("Q4_K_M", 84, 85), ("Q2_K", 45, 30)),
     10.0, "Q4_K_M", "Q8_0"),
    ("tolerance 0: a loss on 10 questions is not kept",
     rows(("Q8_0", 145, 95), ("Q4_K_M", 84, 85)),
     0.0, "Q8_0", "Q8_0"),
]


@pytest.mark.parametrize("label, candidates, tolerance, expected, best", CASES, ids=[c[0] for c in CASES])
def test_the_smallest_file_within_the_tolerance_ships(label, candidates, tolerance, expected, best):
    choice = choose_quant(candidates, tolerance)
    assert (choice["type"], choice["best"]) == (expected, best)
    by_type = {row["type"]: row for row in choice["rows"]}
    kept = [row for row in choice["rows"] if row["keeps"]]
    # the rule, restated: every kept file is within the tolerance and none is smaller than the chosen one
    assert all(row["vs_best"]["high"] * 100 >= -tolerance - 1e-9 for row in kept)
    assert by_type[expected]["bytes"] == min(row["bytes"] for row in kept)
    assert all(row["vs_best"]["high"] * 100 < -tolerance for row in choice["rows"] if not row["keeps"])


def test_a_release_max_kld_passes_over_smaller_files_that_keep_the_score():
    candidates = rows(("Q8_0", 145, 93), ("Q4_K_M", 84, 92), ("Q3_K_M", 70, 92), ("Q2_K", 45, 60))
    for row, kld in zip(candidates, (0.01, 0.2, 0.6, 1.5)):
        row["kld_mean"] = kld
    assert choose_quant(candidates, 2.0)["type"] == "Q3_K_M"
    gated = choose_quant(candidates, 2.0, max_kld=0.5)
    assert gated["type"] == "Q4_K_M" and gated["reason"].endswith(
        "; Q3_K_M kept the score with a mean KLD above max_kld 0.5")
    assert choose_quant(candidates, 2.0, max_kld=0.001)["type"] == "Q8_0"  # none under it: the best, and the gate


def test_the_pairing_decides_where_the_per_file_intervals_overlap():
    """93% and 84% on 100 questions: the two files' own intervals overlap, but Q4_K_M lost 9 questions Q8_0 got
    right and won none, so the paired interval lies below -2 points: not kept."""
    choice = choose_quant(rows(("Q8_0", 145, 93), ("Q4_K_M", 84, 84)), 2.0)
    best, small = choice["rows"]
    assert small["score"]["high"] > best["score"]["low"]
    assert small["vs_best"]["high"] * 100 < -2 and choice["type"] == "Q8_0"


def test_a_wide_paired_interval_that_reaches_the_tolerance_keeps_the_file():
    """Same 80% mean, but right on other questions (20 losses, 20 wins): the paired interval spans -2 points, and
    the rule keeps a file unless the data show it is worse beyond the tolerance."""
    choice = choose_quant(rows(("Q8_0", 145, 80, 0), ("Q4_K_M", 84, 80, 20)), 2.0)
    difference = choice["rows"][1]["vs_best"]
    assert difference["mean"] == 0 and difference["low"] * 100 < -2 < difference["high"] * 100
    assert choice["type"] == "Q4_K_M"


def test_the_reason_says_score_best_and_share_of_size():
    choice = choose_quant(rows(("Q8_0", 100, 93), ("IQ4_XS", 41, 92)), 2.0)
    assert choice["reason"].startswith("IQ4_XS: 92.0% vs 93.0% at Q8_0, 41% of its size (paired 95% interval ")
    assert choice["reason"].endswith("points; tolerance 2)")
    alone = choose_quant(rows(("Q8_0", 100, 93), ("Q2_K", 30, 40)), 2.0)
    assert alone["reason"].startswith("Q8_0: 93.0%, the best task score; no smaller file kept it within 2 points")


@pytest.mark.parametrize("tolerance", [-1, float("nan"), "2", True])
def test_a_tolerance_that_is_no_number_of_points_is_refused(tolerance):
    with pytest.raises(EdgeftError, match="quant_tolerance"):
        choose_quant(rows(("Q8_0", 100, 93)), tolerance)


def test_frontier_holds_the_files_nothing_smaller_beats():
    scored = choose_quant(rows(("Q8_0", 145, 90), ("Q6_K", 112, 92), ("Q5_K_M", 100, 85), ("Q4_K_M", 84, 88),
                               ("Q3_K_M", 70, 88), ("Q2_K", 45, 40)), 2.0)["rows"]
    assert frontier(scored) == ["Q2_K", "Q3_K_M", "Q6_K"]  # Q4_K_M ties Q3_K_M at a larger size: dominated
