"""The ladder tests' data and fixtures: SQL-like training conversations of three kinds, a brute-force BM25
written out from its definition, synthetic rung runs, and fixture GGUFs (a fine-tune and a base) with an eval
set whose golds are the fine-tune's own answers."""

from __future__ import annotations

import json
import math
import re

import pytest

from runtime import ladder

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



def _run(key: str, scores: list[float], tokens: int, ms: float) -> ladder.RungRun:
    run = ladder.RungRun(key, key.replace("-", " "), [[]] * len(scores), [{}] * len(scores))
    run.scores, run.prompt_tokens = list(scores), [tokens] * len(scores)
    run.latency = [{"ttft_s": ms / 2000, "total_s": ms / 1000}] * 3
    return run



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
