"""runtime/ladder.py: the gate against the strongest rung, the verdict and its exit code, the report and the
model card, end to end on fixture GGUFs (every answer the plain llama.cpp one), bad input."""

from __future__ import annotations

import json

import pytest

from convert.common.errors import EdgeftError
from runtime import ladder
from runtime.retrieval import jaccard
from runtime.shots import read_pool
from tests.ladder_helpers import (  # noqa: F401 (ggufs: the fixture)
    _brute_force_bm25, _eval, _plain_answers, _reference_ranking, _run, _write_jsonl, ggufs)


def test_gate_and_verdict_compare_with_the_strongest_rung():
    from runtime.gates import check_gates

    n = 40
    finetune = _run("fine-tune", [1.0] * 30 + [0.0] * 10, 20, 50.0)
    rungs = [_run("zero-shot", [1.0] * 5 + [0.0] * 35, 40, 60.0),
             _run("fixed-3-shot", [1.0] * 12 + [0.0] * 28, 180, 90.0),
             _run("retrieved-3-shot", [1.0] * 20 + [0.0] * 20, 330, 120.0)]
    summary = ladder.summarize(finetune, rungs, requests_per_day=10_000)
    assert summary["strongest"] == "retrieved-3-shot"
    best = summary["rungs"][2]
    assert best["difference"]["mean"] == pytest.approx(0.25) and best["score"]["n"] == n
    tax = summary["prompt_tax"]
    assert tax["tokens_per_request"] == 310 and tax["total_ms_per_request"] == pytest.approx(70.0)
    assert tax["ttft_ms_per_request"] == pytest.approx(35.0)
    assert tax["tokens_per_day"] == 3_100_000 and tax["hours_per_day"] == pytest.approx(35.0 * 10_000 / 3.6e6)
    assert summary["verdict"]["earned"]
    assert summary["verdict"]["text"].startswith(
        "fine-tuning earned it: +25.0 points over retrieved 3 shot, and 310 fewer prompt tokens per request")
    report = {"difference": best["difference"]}
    rows = check_gates({"min_gain": 20, "earned": 0}, report)
    assert [row["passed"] for row in rows] == [True, True]
    assert not check_gates({"min_gain": 26}, report)[0]["passed"]  # the weaker rungs (+62.5, +45) do not count

    close = [_run("zero-shot", [1.0] * 29 + [0.0] * 11, 40, 60.0)]
    summary = ladder.summarize(finetune, close)
    assert not summary["verdict"]["earned"]
    assert summary["verdict"]["text"].startswith(
        "not earned: zero shot is within the interval — ship the prompt, not the weights")
    assert not check_gates({"earned": 0}, {"difference": summary["rungs"][0]["difference"]})[0]["passed"]


def test_strongest_tie_goes_to_the_cheaper_rung():
    finetune = _run("fine-tune", [1.0, 0.0] * 10, 10, 10.0)
    rungs = [_run("zero-shot", [0.0, 1.0] * 10, 30, 10.0), _run("fixed-3-shot", [1.0, 0.0] * 10, 200, 10.0)]
    assert ladder.summarize(finetune, rungs)["strongest"] == "zero-shot"



def test_ladder_end_to_end_earned(ggufs, tmp_path):
    result = _eval(ggufs, tmp_path, ggufs["ft"], "--context", ggufs["context"], "--context-k", "2",
                   "--require-earned", "--requests-per-day", "1000")
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    rungs = report["ladder"]["rungs"]
    assert [r["key"] for r in rungs] == ["zero-shot", "fixed-2-shot", "retrieved-2-shot", "context"]
    for row in [*rungs, report["ladder"]["finetune"]]:
        assert {"mean", "low", "high", "n"} <= set(row["score"]) and row["score"]["n"] == report["n"]
        assert row["prompt_tokens"] > 0 and 0 < row["ttft_ms"] <= row["total_ms"] and row["timed_requests"] == 2
    assert rungs[0]["prompt_tokens"] < rungs[1]["prompt_tokens"]  # the shots cost prompt tokens
    strongest = next(r for r in rungs if r["key"] == report["ladder"]["strongest"])
    assert strongest["score"]["mean"] == max(r["score"]["mean"] for r in rungs)
    assert report["difference"] == strongest["difference"] and report["scores"]["baseline"] == strongest["score"]
    tax = report["ladder"]["prompt_tax"]
    assert tax["tokens_per_request"] == pytest.approx(strongest["prompt_tokens"]
                                                      - report["ladder"]["finetune"]["prompt_tokens"])
    assert tax["tokens_per_day"] == pytest.approx(1000 * tax["tokens_per_request"])
    verdict = report["ladder"]["verdict"]
    assert verdict["earned"] and verdict["text"].startswith(f"fine-tuning earned it: +")
    assert f"over {strongest['label']}" in verdict["text"] and f"verdict: {verdict['text']}" in result.output
    n = report["n"]  # the eval stage says where it is: rung, questions done / total, elapsed
    assert f"eval: fine-tune: fine-tune {n}/{n} (" in result.output
    assert all(f"eval: ladder: {r['label']} {n}/{n} (" in result.output for r in rungs)
    markdown = (out / "report.md").read_text()
    assert "## The baseline ladder" in markdown and verdict["text"] in markdown and "Prompt tax" in markdown
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    # what each row says was retrieved is the brute-force top 2 of the training user turns
    pool = read_pool(ggufs["train"], shots=2)
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    for row in predictions:
        reference = _reference_ranking(_brute_force_bm25([s.user_text for s in pool], row["question"]))
        copies = {i for i in reference if jaccard(pool[i].user_text, row["question"]) >= 0.8
                  or jaccard(pool[i].text, row["question"] + "\n" + row["gold"]) >= 0.8}
        assert copies  # every eval question here is also in the training file, and is skipped
        expected = [pool[i].line for i in reference if i not in copies][:2]
        assert row["rungs"]["retrieved-2-shot"]["shots"] == expected[::-1]
        assert row["rungs"]["fixed-2-shot"]["shots"] == report["ladder"]["fixed_shots"]
        assert len(row["rungs"]["context"]["passages"]) == 2
    # every answer, the fine-tune's and every rung's, is what a lone request gets from llama.cpp (flash attention
    # on as llama-server runs; the prompt in one batch, then one token per decode)
    from runtime.examples import read_examples

    examples = read_examples(ggufs["eval"])
    runs = ladder.prepare(ladder.build_rungs(examples, system="Answer with one SQL query.", shots=2,
                                             shots_from=ggufs["train"], context=ggufs["context"], context_k=2),
                          examples)
    expected = {"fine-tune": _plain_answers(ggufs["ft"], [e.prompt for e in examples])}
    expected.update({run.key: _plain_answers(ggufs["base"], run.prompts) for run in runs})
    assert [row["prediction"] for row in predictions] == expected["fine-tune"]
    for run in runs:
        assert [row["rungs"][run.key]["answer"] for row in predictions] == expected[run.key], run.key


def test_ladder_not_earned_exits_non_zero_with_the_verdict(ggufs, tmp_path):
    """The base against itself: its zero-shot rung is the fine-tune's own prompt, so nothing is gained."""
    from tests.hostile import error_line

    result = _eval(ggufs, tmp_path, ggufs["base"], "--require-earned")
    error_line(result, "gate failed: earned", code=3)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    verdict = report["ladder"]["verdict"]
    assert not verdict["earned"] and not report["passed"]
    # The base scores 0 on answers only the fine-tune gives: no prompt to recommend either (runtime/verdict.py).
    assert verdict["text"].startswith("nothing here does the task: the fine-tune scores 0.0% [0.0, 0.0]")
    assert "ship the prompt" not in verdict["text"] and "(strongest)" not in result.output
    assert f"verdict: {verdict['text']}" in result.output


@pytest.mark.parametrize("make_extra, needle", [
    (lambda g, t: ["--shots", "500"], "solved conversations for --shots 500"),
    (lambda g, t: ["--context", _write_jsonl(t / "empty.jsonl", [])], "the corpus is empty"),
    (lambda g, t: ["--context", str(t / "missing.jsonl")], "--context"),
])
def test_bad_ladder_input_is_one_line(ggufs, tmp_path, make_extra, needle):
    from tests.hostile import one_line_error

    result = _eval(ggufs, tmp_path, ggufs["ft"], *make_extra(ggufs, tmp_path))
    one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_eval_example_without_a_user_turn_is_one_line(ggufs, tmp_path):
    from tests.hostile import invoke, one_line_error

    data = _write_jsonl(tmp_path / "eval.jsonl", [{"messages": [{"role": "system", "content": "Terse."},
                                                                {"role": "assistant", "content": "SELECT 1"}]}])
    result = invoke("eval", ggufs["ft"], "--data", data, "-o", tmp_path / "out", "--baseline", ggufs["base"],
                    "--shots", "2", "--shots-from", ggufs["train"], "--no-speed")
    one_line_error(result, "eval.jsonl:1:", "no user turn")


def _synthetic_report(earned: bool) -> dict:
    finetune = _run("fine-tune", [1.0] * 30 + [0.0] * 10, 20, 50.0)
    rung = _run("retrieved-3-shot", ([1.0] * 10 if earned else [1.0] * 29) + [0.0] * (30 if earned else 11), 330, 120.0)
    summary = ladder.summarize(finetune, [rung], requests_per_day=1000)
    return {"metric": "sql-exec:db", "n": 40, "settings": {"system": "x", "shots": 3}, "ladder": summary,
            "scores": {"model": summary["finetune"]["score"], "baseline": summary["rungs"][0]["score"]},
            "difference": summary["rungs"][0]["difference"]}


def test_model_card_shows_the_ladder_and_the_verdict(tmp_path):
    from edgeft.release.card import render_model_card
    from edgeft.release.metrics import metrics_from_outputs

    metrics = metrics_from_outputs(_synthetic_report(True), {}, tmp_path, quant="Q4_K_M")
    assert metrics["task"]["baseline_setup"].startswith("retrieved 3 shot")
    assert [row["rung"] for row in metrics["ladder"]["rows"]] == ["retrieved 3 shot", "fine tune"]
    card = render_model_card({"name": "demo", "quant": "Q4_K_M", "base_model": {"name": "base"}, "metrics": metrics},
                             gguf_name="demo-Q4_K_M.gguf")
    assert "## The baseline ladder" in card and "| **retrieved 3 shot** (strongest) | 25.0% (" in card
    assert "**Verdict: fine-tuning earned it: +50.0 points over retrieved 3 shot, and 310 fewer prompt tokens" in card
    assert "310 prompt tokens and 35.0 ms of prompt processing (time to first token) per request (total time per " \
        "request 70.0 ms, answers included); at 1,000 requests a day, 310,000 tokens" in card


def test_release_eval_gates_on_the_verdict_and_refuses_to_publish(tmp_path, monkeypatch):
    """The release's eval stage always adds the `earned` gate; a failed verdict publishes nothing and says why."""
    import runtime.evaluate
    from edgeft.release import settings as rp
    from edgeft.release import stages
    from edgeft.release.publish import publish_release
    from runtime.gates import check_gates

    calls = []
    monkeypatch.setattr(runtime.evaluate, "run_eval", lambda model, data, out_dir, settings: calls.append(settings))
    settings = rp.resolve_settings(base="m", data=tmp_path / "t.jsonl", eval_path=tmp_path / "e.jsonl", out=tmp_path)
    stages.stage_eval(settings)
    assert calls[-1].gates["earned"] == 0 and calls[-1].shots == 3
    report = _synthetic_report(False)
    gates = ladder.explain_gates(check_gates({"earned": 0}, report), report["ladder"])
    assert not gates[0]["passed"] and "ship the prompt, not the weights" in gates[0]["text"]
    with pytest.raises(EdgeftError, match="gate failed: earned.*not earned: retrieved 3 shot is within the interval"):
        publish_release("demo", tmp_path / "release", gguf=tmp_path / "m.gguf", base_dir=tmp_path, quant="Q4_K_M",
                        recipe={}, data_files={}, metrics={}, gates=gates)
    assert not (tmp_path / "release" / "demo").exists()


def test_score_gguf_gives_the_fine_tunes_score_from_its_plain_answers(ggufs):
    from runtime.examples import read_examples
    from runtime.metrics import parse_metric

    examples = read_examples(ggufs["eval"])
    run = ladder.score_gguf(ggufs["ft"], examples, parse_metric("exact"), n_ctx=512, threads=1, max_tokens=6)
    assert run.answers == _plain_answers(ggufs["ft"], [e.prompt for e in examples])
    assert run.scores == [1.0] * len(examples)  # the golds are the fine-tune's own answers
    other = ladder.score_gguf(ggufs["base"], examples, parse_metric("exact"), n_ctx=512, threads=1, max_tokens=6)
    assert sum(other.scores) < len(examples)
