"""The ladder's verdict says only what the numbers support: no prompt that scores 0% is recommended, nothing that
scores nothing is called "within the interval", and tied rungs are not "the strongest"."""

from __future__ import annotations

from runtime import ladder
from runtime.ladder_report import ladder_lines, ladder_markdown
from runtime.verdict import NEXT_STEPS
from tests.ladder_helpers import _run

N = 40


def _summary(finetune: list[float], *rungs: list[float]):
    keys = ["zero-shot", "fixed-3-shot", "retrieved-3-shot"]
    return ladder.summarize(_run("fine-tune", finetune, 20, 50.0),
                            [_run(key, scores, 40 * (i + 1), 60.0) for i, (key, scores) in enumerate(zip(keys, rungs))])


def test_when_everything_scores_zero_nothing_is_recommended():
    summary = _summary([0.0] * N, [0.0] * N, [0.0] * N, [0.0] * N)
    text = summary["verdict"]["text"]
    assert not summary["verdict"]["earned"]
    assert text == ("nothing here does the task: the fine-tune scores 0.0% [0.0, 0.0] and zero shot (tied with "
                    "fixed 3 shot, retrieved 3 shot) 0.0% [0.0, 0.0], neither measurably above 0 — ship neither; "
                    + NEXT_STEPS)
    assert "ship the prompt" not in text
    assert summary["tied"] == ["fixed-3-shot", "retrieved-3-shot"]
    shown = "\n".join(ladder_markdown(summary) + ladder_lines(summary))
    assert "(strongest)" not in shown
    assert "**zero shot** (tied best, compared)" in shown and "**fixed 3 shot** (tied best)" in shown


def test_a_fine_tune_that_scores_but_cannot_be_told_from_a_prompt_that_does_not():
    # Fine-tune 4/40, best rung 1/40 (the same question): the fine-tune is measurably above 0, the rung is not,
    # and 3 wins in 40 do not make the gain's interval clear 0.
    finetune = [1.0] * 4 + [0.0] * (N - 4)
    rung = [1.0] + [0.0] * (N - 1)
    summary = _summary(finetune, rung)
    best = summary["rungs"][0]
    assert summary["finetune"]["score"]["low"] > 0 and best["score"]["low"] == 0 and best["difference"]["low"] <= 0
    text = summary["verdict"]["text"]
    assert text.startswith("not earned, and no prompt does the task either: the fine-tune scores 10.0% [")
    assert text.endswith(NEXT_STEPS) and "n=40" in text and "ship the prompt" not in text


def test_a_prompt_that_scores_is_still_recommended_over_a_fine_tune_that_does_not_beat_it():
    scores = [1.0] * 20 + [0.0] * 20
    summary = _summary(scores, [1.0] * 5 + [0.0] * 35, scores)
    assert summary["strongest"] == "fixed-3-shot" and summary["tied"] == []
    assert summary["verdict"]["text"].startswith("not earned: fixed 3 shot is within the interval — ship the prompt")
    assert "**fixed 3 shot** (strongest)" in "\n".join(ladder_markdown(summary))


def test_ties_above_zero_name_every_tied_rung():
    summary = _summary([1.0] * 30 + [0.0] * 10, [1.0] * 10 + [0.0] * 30, [0.0] * 30 + [1.0] * 10)
    assert summary["strongest"] == "zero-shot" and summary["tied"] == ["fixed-3-shot"]
    assert summary["verdict"]["text"].startswith("fine-tuning earned it: +50.0 points over zero shot (tied with "
                                                 "fixed 3 shot)")


def test_the_card_names_tied_rungs_as_tied(tmp_path):
    from edgeft.release.card import render_model_card
    from edgeft.release.metrics import metrics_from_outputs

    summary = _summary([0.0] * N, [0.0] * N, [0.0] * N)
    report = {"metric": "exact", "n": N, "settings": {}, "ladder": summary, "difference": summary["rungs"][0]["difference"],
              "scores": {"model": summary["finetune"]["score"], "baseline": summary["rungs"][0]["score"]}}
    metrics = metrics_from_outputs(report, {}, tmp_path, quant="Q4_K_M")
    assert metrics["task"]["baseline_setup"] == "zero shot (tied with fixed 3 shot), the best rungs of the ladder"
    card = render_model_card({"name": "d", "quant": "Q4_K_M", "base_model": {"name": "b"}, "metrics": metrics},
                             gguf_name="d-Q4_K_M.gguf")
    assert "| **zero shot** (tied best, compared) | 0.0% (" in card and "(strongest)" not in card
    assert "**Verdict: nothing here does the task:" in card


def test_a_longer_fine_tune_prompt_is_not_called_a_prompt_tax():
    from runtime.ladder_report import tax_sentence

    summary = ladder.summarize(_run("fine-tune", [1.0] * N, 90, 50.0), [_run("zero-shot", [0.0] * N, 40, 60.0)])
    assert summary["prompt_tax"]["tokens_per_request"] == -50
    assert tax_sentence(summary["prompt_tax"]).startswith(
        "No prompt tax saved: the fine-tune's own prompt is 50 tokens longer than zero shot's")
    assert "50 more prompt tokens per request" in summary["verdict"]["text"]
