"""The baseline ladder: retrieval against a brute-force BM25, the eval question's own copies never retrieved,
fixed shots that cover the data, the gate against the strongest rung, the verdict and its exit code, bad input."""

from __future__ import annotations

import json
import math
import random
import re

import pytest

from edgeft.errors import EdgeftError
from runtime import ladder
from runtime.examples import Example
from runtime.retrieval import BM25Index, jaccard
from runtime.shots import RetrievedShots, Shot, choose_fixed, read_pool

KINDS = {
    "count": ("How many {t} are there in {c}?", "SELECT COUNT(*) FROM {t} WHERE city = '{c}'"),
    "list": ("Show me every one of the {t} from {c}, please", "SELECT * FROM {t} WHERE city = '{c}'"),
    "sum": ("What is the total spent by {t} living in {c}", "SELECT SUM(total) FROM {t} WHERE city = '{c}'"),
}
TABLES = ["customers", "clients", "buyers", "shoppers"]
CITIES = ["Oslo", "Rome", "Paris", "Lyon", "Riga", "Bergen", "Porto", "Sofia"]


def _conversation(question: str, answer: str) -> dict:
    return {"messages": [{"role": "system", "content": "Terse."}, {"role": "user", "content": question},
                         {"role": "assistant", "content": answer}]}


def _training_rows() -> list[dict]:
    """Kinds interleaved unevenly (not one kind per block), so "the first k" would not cover them."""
    rows = []
    for table in TABLES:
        for city in CITIES:
            for kind in ("count", "count", "list", "sum") if city != "Oslo" else ("count",):
                question, sql = KINDS[kind]
                if kind == "count" and rows and rows[-1]["messages"][1]["content"].startswith("How many"):
                    question = "Count the {t} in {c}"
                rows.append(_conversation(question.format(t=table, c=city), sql.format(t=table, c=city)))
    return rows


def _write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _brute_force_bm25(documents: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Lucene BM25 written out from its definition, one document at a time."""
    tokenized = [re.findall(r"\w+", d.lower()) or [""] for d in documents]
    n = len(tokenized)
    average = sum(len(t) for t in tokenized) / n
    scores = []
    for tokens in tokenized:
        total = 0.0
        for term in dict.fromkeys(re.findall(r"\w+", query.lower())):
            df = sum(term in other for other in tokenized)
            if df == 0:
                continue
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            tf = tokens.count(term)
            total += idf * tf / (tf + k1 * (1 - b + b * len(tokens) / average))
        scores.append(total)
    return scores


def _reference_ranking(scores: list[float]) -> list[int]:
    return sorted(range(len(scores)), key=lambda i: (-round(scores[i], 9), i))


def test_bm25_ranking_matches_brute_force():
    rng = random.Random(7)
    vocabulary = [f"w{i}" for i in range(40)] + ["orders", "customers", "Oslo", "count"]
    documents = [" ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 25))) for _ in range(120)]
    documents += [documents[3], ""]  # an exact tie and an empty document
    index = BM25Index(documents)
    for _ in range(25):
        query = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(1, 6)))
        expected = _brute_force_bm25(documents, query)
        assert index.scores(query) == pytest.approx(expected, rel=1e-9, abs=1e-12)
        assert index.ranked(query, k=len(documents)) == _reference_ranking(expected)


def _example(question: str, answer: str, line: int = 1) -> Example:
    return Example(line, [{"role": "system", "content": "Terse."}, {"role": "user", "content": question}], answer)


def test_retrieved_shots_are_the_brute_force_top_k_without_the_question_or_its_near_duplicates(tmp_path):
    rows = _training_rows()
    question = "How many buyers are there in Rome? Count every one of them, carefully, for the report."
    gold = "SELECT COUNT(*) FROM buyers WHERE city = 'Rome'"
    rows.insert(5, _conversation(question, gold))  # the eval example itself leaked into training
    rows.insert(17, _conversation(question.upper().replace(",", " ;"), gold))  # case and punctuation only
    rows.insert(30, _conversation(question.replace("carefully", "carefuly"), gold))  # a typo
    pool = read_pool(_write_jsonl(tmp_path / "train.jsonl", rows), shots=3)
    retriever = RetrievedShots(pool)
    example = _example(question, gold)

    reference = _reference_ranking(_brute_force_bm25([shot.user_text for shot in pool], question))
    copies = [i for i in reference if jaccard(pool[i].user_text, question) >= 0.8]
    assert {pool[i].line for i in copies} >= {6, 18, 31} and set(reference[:3]) <= set(copies)  # they rank first
    expected = [pool[i] for i in reference if i not in copies][:3]
    found = retriever.for_example(example, 3)
    assert found == expected[::-1]  # best last, right before the question
    assert all(jaccard(shot.user_text, question) < 0.8 for shot in found)
    assert RetrievedShots(read_pool(tmp_path / "train.jsonl", shots=3)).for_example(example, 3) == found  # same again


def test_fixed_shots_cover_the_kinds_and_are_deterministic(tmp_path):
    rows = _training_rows()
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    pool = read_pool(path, shots=3)
    chosen = choose_fixed(pool, 3)
    kinds = {shot.turns[-1]["content"].split(" FROM")[0] for shot in chosen}
    assert kinds == {"SELECT COUNT(*)", "SELECT *", "SELECT SUM(total)"}
    first_three = {shot.turns[-1]["content"].split(" FROM")[0] for shot in pool[:3]}
    assert first_three != kinds  # the first k would not have covered them
    assert choose_fixed(read_pool(path, shots=3), 3) == chosen
    # reversed file order: the kinds are covered all the same (only ties between equivalent examples follow the order)
    reversed_pool = read_pool(_write_jsonl(tmp_path / "reversed.jsonl", rows[::-1]), shots=3)
    assert {s.turns[-1]["content"].split(" FROM")[0] for s in choose_fixed(reversed_pool, 3)} == kinds


def test_fixed_shots_skip_near_duplicates_of_eval_questions(tmp_path):
    pool = read_pool(_write_jsonl(tmp_path / "train.jsonl", _training_rows()), shots=3)
    first = choose_fixed(pool, 1)[0]
    replacement = choose_fixed(pool, 1, avoid=[first.user_text + "!"])[0]
    assert replacement != first and jaccard(replacement.user_text, first.user_text) < 0.8


def _run(key: str, scores: list[float], tokens: int, ms: float) -> ladder.RungRun:
    run = ladder.RungRun(key, key.replace("-", " "), [[]] * len(scores), [{}] * len(scores))
    run.scores, run.prompt_tokens = list(scores), [tokens] * len(scores)
    run.latency = [{"ttft_s": ms / 2000, "total_s": ms / 1000}] * 3
    return run


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


# ---- end to end on fixture GGUFs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from convert import convert_model
    from tests.factory import build_model

    folder = tmp_path_factory.mktemp("ladder")
    paths = {"ft": convert_model(build_model("llama"), folder / "ft-q8_0.gguf", outtype="q8_0"),
             "base": convert_model(build_model("llama", seed=1), folder / "base-q8_0.gguf", outtype="q8_0")}
    questions = ["How many clients are there in Oslo?", "Show me every one of the buyers from Rome",
                 "What is the total spent by shoppers living in Lyon", "Count the customers in Riga",
                 "How many buyers are there in Porto?", "Show me every one of the clients from Sofia"]
    paths["questions"] = questions
    paths["train"] = _write_jsonl(folder / "train.jsonl", _training_rows())
    paths["context"] = _write_jsonl(folder / "docs.jsonl", [{"text": f"The {t} table lists {t} by city."}
                                                             for t in TABLES])
    # Gold = what the fine-tune itself answers with its own prompt: it scores 100%, a different model ~0%.
    from runtime.generate import chat_reply
    from runtime.gates import MIN_EXAMPLES_FOR_SIGNIFICANCE
    from runtime.load import open_gguf

    llm = open_gguf(paths["ft"], n_ctx=512, threads=1)
    rows = []
    # Enough examples for a 95% claim (runtime.gates.MIN_EXAMPLES_FOR_SIGNIFICANCE): fewer cannot earn the verdict.
    # Each is also a training question (retrieval must skip its copies).
    asked = list(dict.fromkeys(questions + [KINDS["sum"][0].format(t=t, c=c) for t in TABLES for c in CITIES
                                            if c != "Oslo"]))
    for question in asked:
        messages = [{"role": "system", "content": "Terse."}, {"role": "user", "content": question}]
        answer = chat_reply(llm, messages, max_tokens=6).text
        if answer.strip():
            rows.append({"messages": messages + [{"role": "assistant", "content": answer}]})
    llm.close()
    assert len(rows) >= MIN_EXAMPLES_FOR_SIGNIFICANCE
    paths["eval"] = _write_jsonl(folder / "eval.jsonl", rows)
    return paths


def _plain_answers(path, prompts, max_tokens=6) -> list[str]:
    import llama_cpp

    from runtime.generate import detokenize, prompt_tokens, render_chat
    from tests.serve_helpers import greedy_tokens

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
    answers = [detokenize(llm, greedy_tokens(llm, prompt_tokens(llm, render_chat(llm, m)), max_tokens))
               for m in prompts]
    llm.close()
    return answers


def _eval(ggufs, tmp_path, model, *extra):
    from tests.hostile import invoke

    return invoke("eval", model, "--data", ggufs["eval"], "-o", tmp_path / "out", "--baseline", ggufs["base"],
                  "--system", "Answer with one SQL query.", "--shots", "2", "--shots-from", ggufs["train"],
                  "--max-tokens", "6", "--ctx", "512", "--threads", "1", "--no-speed", "--latency-samples", "2",
                  *extra)


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


def test_the_decoder_loop_in_every_mode_matches_the_plain_reference(ggufs):
    """runtime.decode against llama-cpp-python's own loop (flash attention on, as llama-server runs; the prompt in
    one batch, then one token per decode): one request at a time from an empty slot gives its answers exactly;
    the prefix cache and several slots side by side give them too on F32 weights, and the prefix cache evaluates
    only what a prompt does not share."""
    import llama_cpp

    from convert import convert_model
    from runtime.decode import Decoder, Request
    from runtime.generate import prompt_tokens, render_chat
    from tests.factory import build_model
    from tests.serve_helpers import greedy_tokens

    path = convert_model(build_model("llama"), ggufs["ft"].parent / "ft-f32.gguf", outtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
    shots = [{"role": "user", "content": "Count the customers in Oslo"}, {"role": "assistant", "content": "SELECT 1"}]
    prompts = [[{"role": "system", "content": "Terse."}, *shots, {"role": "user", "content": q}]
               for q in ggufs["questions"]]
    tokens = [prompt_tokens(llm, render_chat(llm, p)) for p in prompts]
    expected = [greedy_tokens(llm, t, 8) for t in tokens]
    decoder = Decoder(llm, n_ctx=512, threads=1)
    requests = [Request(t, max_tokens=8) for t in tokens]
    assert [s.generated for s in decoder.run(requests, plain=True)] == expected
    before = decoder.counts["prompt_evaluated"]
    assert [s.generated for s in decoder.run(requests)] == expected  # prefix reused each time
    assert decoder.counts["prompt_evaluated"] - before < sum(len(t) for t in tokens)
    decoder.close()
    decoder = Decoder(llm, n_seq=3, n_ctx=512, threads=1)
    first = [s.generated for s in decoder.run(requests[:3])]
    again = [s.generated for s in decoder.run(requests[:3])]  # every prompt now cached
    assert first == again == expected[:3] and any(first)
    decoder.close()
    llm.close()


def test_shot_dataclass_text_joins_turns():
    shot = Shot(3, ({"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}), "q")
    assert shot.text == "q\na"
    with pytest.raises(EdgeftError, match="needs shots_from"):
        read_pool(None, shots=2)


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


@pytest.mark.parametrize("exact, past", [(None, False), (None, True), (False, False)],
                         ids=["probe", "past-lone-cells", "not-exact"])
def test_batched_eval_answers_are_the_lone_answers(ggufs, monkeypatch, exact, past):
    """runtime.batching: several requests at once, each answer the one the request gets alone; also when requests
    pass LONE_CELLS mid-answer (they go on alone) and when the probe says rows are not batch-exact (all alone)."""
    from runtime import batching
    from runtime.decode import Decoder, Request
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    if exact is not None:
        monkeypatch.setattr(batching, "rows_are_batch_exact", lambda decoder: exact)
    prompts = [[{"role": "user", "content": q}] for q in ggufs["questions"]]
    expected = _plain_answers(ggufs["base"], prompts, max_tokens=12)
    llm = open_gguf(ggufs["base"], n_ctx=64, threads=1)
    decoder = Decoder(llm, n_seq=3, n_ctx=256, threads=1)
    step = batching.BatchExact(decoder)
    requests = [Request(prompt_tokens(llm, render_chat(llm, p)), max_tokens=12) for p in prompts]
    if past:  # every request goes on alone a few tokens into its answer
        monkeypatch.setattr(batching, "LONE_CELLS", max(len(r.tokens) for r in requests) + 3)
    got = [decoder.detokenize(s.generated) for s in decoder.run(requests, fresh=True, step_fn=step)]
    assert got == expected
    assert (step.tokens_batched > 0) == (exact is not False and step.batched)
    decoder.close()
    llm.close()
