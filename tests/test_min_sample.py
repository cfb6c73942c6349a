"""A claim of significance needs enough examples: with one eval example the `earned` gate passed on a 95% interval of
[+100, +100]. Below runtime.gates.MIN_EXAMPLES_FOR_SIGNIFICANCE the gate fails and the verdict claims nothing, both
saying why; `release verify` applies the same rule to a manifest's gate rows."""

from __future__ import annotations

import json

import pytest

from runtime import ladder
from runtime.gates import MIN_EXAMPLES_FOR_SIGNIFICANCE as MIN
from runtime.gates import check_gates
from tests.ladder_helpers import _eval, _run, ggufs  # noqa: F401 (the fixture)


def _all_won(n: int) -> dict:
    return ladder.summarize(_run("fine-tune", [1.0] * n, 20, 50.0), [_run("zero-shot", [0.0] * n, 40, 60.0)])


@pytest.mark.parametrize("n, earned", [(1, False), (MIN - 1, False), (MIN, True)])
def test_the_earned_gate_and_the_verdict_need_the_minimum_sample(n, earned):
    summary = _all_won(n)
    difference = summary["rungs"][0]["difference"]
    assert difference["low"] == difference["high"] == 1.0  # every resample agrees: a zero-width interval
    row = check_gates({"earned": 0, "min_gain": 50}, {"difference": difference, "n": n})
    assert [r["passed"] for r in row] == [earned, True] and row[0]["n"] == n  # min_gain claims no significance
    assert summary["verdict"]["earned"] is earned
    if not earned:
        assert row[0]["text"] == (f"earned: {n} eval examples, fewer than the {MIN} a 95% claim needs (an interval "
                                  "over so few is not evidence) — FAIL; add held-out examples")
        assert summary["verdict"]["text"].startswith(
            f"not shown: {n} eval examples are too few for a 95% claim (at least {MIN}); the fine-tune scores "
            "100.0% [100.0, 100.0] and zero shot 0.0% [0.0, 0.0] (95% interval +100.0 to +100.0 points, "
            f"n={n}); add held-out examples")


def test_one_example_does_not_earn_a_release_end_to_end(ggufs, tmp_path):  # noqa: F811
    result = _eval(ggufs, tmp_path, ggufs["ft"], "--require-earned", "--limit", "1")
    assert result.exit_code == 3, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n"] == 1 and report["difference"]["low"] == 1.0  # what used to pass
    assert not report["ladder"]["verdict"]["earned"] and report["failed_gates"] == ["earned"]
    assert "gate earned: 1 eval examples, fewer than the 30 a 95% claim needs" in result.output
    assert "100.0 [100.0, 100.0] n=1" in (tmp_path / "out" / "report.md").read_text()


def test_verify_applies_the_minimum_to_a_manifest_gate_row(tmp_path):
    from edgeft.release.verify import _gate_problems

    row = {"gate": "earned", "threshold": 0.0, "value": 100.0, "n": 1, "passed": True, "text": "earned: pass"}
    assert _gate_problems({"gates": [row], "verdict": "pass"}) == [
        "manifest.json: gate earned: value 100.0 > 0.0 over 1 examples is a FAIL, but the row says pass"]
    assert _gate_problems({"gates": [{**row, "n": MIN}], "verdict": "pass"}) == []
