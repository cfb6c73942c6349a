"""Every interval a report prints carries its sample size: report.md, the terminal, the fleet table and the card
(a bootstrap over a handful of examples looks as tight as one over hundreds)."""

from __future__ import annotations

import re

from edgeft.release.card import render_model_card
from edgeft.release.metrics import metrics_from_outputs
from runtime import fleet_eval
from runtime.ladder_report import ladder_lines
from runtime.report import render_markdown
from runtime.stats import mean_interval, shown_interval
from tests.test_verdict import _summary

# "60.0 [53.0, 67.0]", "+5.0 [+1.0, +9.0]" or the card's "(95% CI +50.0 to +65.0 points" / "(2.5% to 7.5%"
INTERVAL = re.compile(r"\[[+-]?\d+\.\d, [+-]?\d+\.\d\]|CI [+-]?\d+\.\d to [+-]?\d+\.\d points|\d% to \d+\.\d%")


def _without_n(text: str) -> list[str]:
    return [line for line in text.splitlines() for match in INTERVAL.finditer(line)
            if not re.match(r"\]? n=\d+|, n=\d+", line[match.end():])]


def _report():
    summary = _summary([1.0] * 30 + [0.0] * 10, [1.0] * 10 + [0.0] * 30, [1.0] * 12 + [0.0] * 28)
    best = summary["rungs"][1]
    return {"model": "ft.gguf", "baseline": "base.gguf", "data": "eval.jsonl", "metric": "exact", "n": 40,
            "settings": {"system": "x", "shots": 3, "max_tokens": 8}, "ladder": summary, "difference": best["difference"],
            "scores": {"model": summary["finetune"]["score"], "baseline": best["score"]}, "gates": []}


def test_report_terminal_and_card_print_n_beside_every_interval(tmp_path):
    report = _report()
    metrics = metrics_from_outputs(report, {}, tmp_path, quant="Q4_K_M")
    card = render_model_card({"name": "d", "quant": "Q4_K_M", "base_model": {"name": "b"}, "metrics": metrics},
                             gguf_name="d-Q4_K_M.gguf")
    for text in (render_markdown(report), "\n".join(ladder_lines(report["ladder"])), card):
        assert INTERVAL.search(text) and _without_n(text) == []
    assert "n=40" in render_markdown(report) and "n=40)" in card


def test_the_fleet_table_prints_n_beside_every_interval():
    score = mean_interval([1.0, 0.0, 1.0])
    report = {"base": "b.gguf", "n": 3, "data": "e.jsonl", "metric": "exact",
              "models": [{"model": "base", "score": score, "difference_vs_base": None},
                         {"model": "sql", "score": score, "difference_vs_base": {**score, "mean": 0.0}}]}
    text = fleet_eval._markdown(report)
    assert INTERVAL.search(text) and _without_n(text) == []


def test_shown_interval():
    assert shown_interval({"mean": 0.6, "low": 0.53, "high": 0.67, "n": 40}) == "60.0 [53.0, 67.0] n=40"
    assert shown_interval({"mean": 0.05, "low": -0.01, "high": 0.1, "n": 7}, points=True) == "+5.0 [-1.0, +10.0] n=7"
    assert shown_interval(None) == shown_interval({"mean": float("nan"), "n": 0}) == "—"
