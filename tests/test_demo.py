"""The built-in demo: NL->SQL task generator, its SQLite file, and the small pretrained base LM."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from edgeft.demo import sql_task
from tests.hostile import _folder, invoke, one_line_error, tree_state

SQL_LITERAL = re.compile(r"'[^']*'|\b\d+\b")


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo-data")
    paths = sql_task.write_task(out)
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines()]  # noqa: E731
    train = read(paths["train"])
    sql = [e for e in train if e["messages"][0]["role"] == "system"]  # the rest are replayed generic chats
    return {"paths": paths, "train": sql, "general": [e for e in train if e not in sql], "eval": read(paths["eval"])}


def _question(example) -> str:
    return example["messages"][1]["content"]


def _gold(example) -> str:
    return example["messages"][-1]["content"]


def test_sizes_roles_and_system_prompt(task):
    assert len(task["train"]) == sql_task.N_TRAIN and len(task["eval"]) == 200
    assert len(task["general"]) == sql_task.N_GENERAL
    assert all([m["role"] for m in e["messages"]] == ["user", "assistant"] for e in task["general"])
    assert not any("SELECT" in e["messages"][-1]["content"] for e in task["general"])
    for example in task["train"][:50] + task["eval"][:50]:
        assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
        assert "terse SQL assistant" in example["messages"][0]["content"]


def test_deterministic(task, tmp_path):
    again = sql_task.write_task(tmp_path)
    for role in ("train", "eval", "db"):
        assert again[role].read_bytes() == task["paths"][role].read_bytes() or role == "db"
    rows = lambda p: sqlite3.connect(p).execute("SELECT * FROM products ORDER BY id").fetchall()  # noqa: E731
    assert rows(again["db"]) == rows(task["paths"]["db"])


def test_eval_is_unseen(task):
    """No eval question or answer occurs in training: each (question kind, value) combination is on one side only.
    About a quarter of eval names values training never contains at all (the real base can copy them); in the rest
    every value was seen in training, just never in that kind of question."""
    normal = lambda text: " ".join(text.lower().split())  # noqa: E731
    train_questions = {normal(_question(e)) for e in task["train"]}
    train_answers = {_gold(e) for e in task["train"]}
    train_literals = {lit for e in task["train"] for lit in SQL_LITERAL.findall(_gold(e))}
    shape = lambda sql: SQL_LITERAL.sub("?", sql)  # noqa: E731
    train_combinations = {(shape(_gold(e)), lit) for e in task["train"] for lit in SQL_LITERAL.findall(_gold(e))}
    unseen_values = {f"'{v}'" if isinstance(v, str) else str(v) for values in sql_task.UNSEEN_VALUES.values()
                     for v in values}
    unseen = 0
    for example in task["eval"]:
        assert normal(_question(example)) not in train_questions
        assert _gold(example) not in train_answers
        literals = SQL_LITERAL.findall(_gold(example))
        if not set(literals) <= train_literals:
            unseen += 1
            new = set(literals) - train_literals
            assert new <= unseen_values or all(lit.startswith("'") for lit in new), _gold(example)
        if len(literals) == 1:
            assert (shape(_gold(example)), literals[0]) not in train_combinations
    assert 0.15 < unseen / len(task["eval"]) < 0.35, unseen
    assert not train_literals & unseen_values, train_literals & unseen_values
    # phrasings: the eval templates are not training templates
    train_templates = {sql_task._normal(t) for i in sql_task.INTENTS for p in i.train for t in sql_task.all_expansions(p)}
    assert len(train_templates) > 5000  # compositional: many phrasings, so eval's new ones are in style
    for intent in sql_task.INTENTS:
        assert not {sql_task._normal(p) for p in intent.eval} & train_templates, intent.name
    assert len({_gold(e) for e in task["eval"]}) >= 2 * len(sql_task.INTENTS)


def test_questions_are_messy(task):
    questions = [_question(e) for e in task["train"]]
    phrases = [p for i in sql_task.INTENTS for p in i.train + i.eval] + [w for g in sql_task.WORDS.values() for w in g]
    phrases += sql_task.PREFIXES[0] + sql_task.PREFIXES[1]
    template_words = {w.strip("?,.#{}':").lower() for p in phrases for w in p.split()}
    lower = sum(q == q.lower() for q in questions) / len(questions)
    no_mark = sum(not q.rstrip().endswith("?") for q in questions) / len(questions)
    typos = sum(any(w.isalpha() and len(w) >= 4 and w.lower() not in template_words and not w[0].isupper()
                    for w in q.split()) for q in questions) / len(questions)
    assert 0.3 < lower < 0.9 and no_mark > 0.3 and typos > 0.05


def test_gold_queries_run_and_mostly_return_rows(task):
    db = sqlite3.connect(task["paths"]["db"])
    empty = 0
    for example in task["train"] + task["eval"]:
        rows = db.execute(_gold(example)).fetchall()
        empty += rows in ([], [(0,)], [(None,)])
    assert empty / (len(task["train"]) + len(task["eval"])) < 0.05
    schema = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert schema == {"customers", "products", "orders"}


def test_data_check_passes(task):
    from edgeft.data.check import check_dataset

    report = check_dataset(task["paths"]["train"], eval_path=task["paths"]["eval"])
    assert report.errors == []


def test_cli_demo_data(tmp_path):
    result = CliRunner().invoke(main, ["demo", "data", "-o", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "d").iterdir()} == {"train.jsonl", "eval.jsonl", "shop.sqlite", "schema.sql",
                                                             "task.json"}


# ---- base LM -------------------------------------------------------------------------------------------------

TINY = {"vocab_size": 512, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256, "seq_len": 32,
        "batch_size": 4, "steps": 6, "lr": 1e-3, "warmup": 2, "seed": 0, "threads": 1, "corpus_chars": 60_000,
        "chat_fraction": 0.25, "reading_fraction": 0.6, "version": 1}


def test_corpus_has_no_sql_and_has_chat():
    from edgeft.demo.base_lm import build_corpus, stdlib_docstrings

    names = [name for name, _ in stdlib_docstrings()]
    assert len(names) > 1000 and not any(n.startswith("sqlite3") for n in names)
    texts = build_corpus(TINY)
    chats = [t for t in texts if t.startswith("<|im_start|>")]
    assert chats and all(t.rstrip().endswith("<|im_end|>") for t in chats)
    assert build_corpus(TINY) == texts
    # some chat answers must be read out of the question (copying is what a fine-tune later builds on)
    turns = [re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>\n<\|im_start\|>assistant\n(.*?)<\|im_end\|>", t, re.S)
             for t in chats]
    copied = [a for pairs in turns for q, a in pairs if a and a in q]
    assert len(copied) > 10
    assert not any(re.search(r"\bSELECT\b.*\bFROM\b.*\bWHERE\b", t) for t in texts)
    # the shop's names are in the corpus (so the tokenizer has them whole), as plain prose only
    with_places = build_corpus(dict(TINY, place_texts=20))
    assert any(city in t for t in with_places for city in sql_task.ASKED_CITIES)
    assert not any(re.search(r"\bSELECT\b.*\bFROM\b.*\bWHERE\b", t) for t in with_places)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from edgeft.demo.base_lm import build_base_model

    return build_base_model(tmp_path_factory.mktemp("base") / "base", TINY, log=lambda _: None)


def test_base_is_a_loadable_chatml_llama(tiny_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert json.loads((tiny_base / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer(rendered)["input_ids"]
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3  # specials are single tokens
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.decode(ids) == rendered
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    assert model.config.vocab_size == TINY["vocab_size"]
    stamp = json.loads((tiny_base / "pretrain.json").read_text())
    assert stamp["loss_last"] < stamp["loss_first"]  # it trained
    assert "license: apache-2.0" in (tiny_base / "README.md").read_text()


def test_base_is_deterministic_and_cached(tiny_base, tmp_path):
    from edgeft.demo.base_lm import build_base_model

    digest = lambda p: hashlib.sha256((p / "model.safetensors").read_bytes()).hexdigest()  # noqa: E731
    again = build_base_model(tmp_path / "base", TINY, log=lambda _: None)
    assert digest(again) == digest(tiny_base)
    logs = []
    build_base_model(tmp_path / "base", TINY, log=logs.append)
    assert logs == [f"demo base: cached at {tmp_path / 'base'}"]


# ---- hostile input -------------------------------------------------------------------------------------------------

# `edgeft demo data -o FOLDER` wrote over a user's own train.jsonl (exit 0). A folder is the demo's when it is
# empty, holds the stamp, or (caches from before the stamp) holds only task files with an earlier generator's bytes.
DEMO_DATA_FOLDERS = [
    ({}, None),
    ({"task.json": "{}", "train.jsonl": "an earlier run's\n"}, None),
    ({"train.jsonl": "UNSTAMPED\n", "shop.sqlite": "UNSTAMPED\n"}, None),  # bytes an earlier generator wrote
    ({"train.jsonl": '{"messages": []}\n'}, "its train.jsonl is not the demo's (no task.json"),
    ({"train.jsonl": "UNSTAMPED\n", "eval.jsonl": "mine\n"}, "its eval.jsonl is not the demo's"),
    ({"notes.txt": "mine"}, "holds notes.txt, which this command does not write"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", DEMO_DATA_FOLDERS)
def test_demo_data_writes_only_into_its_own_folder(tmp_path, monkeypatch, files, needle):
    import hashlib

    import edgeft.demo as demo

    earlier = (hashlib.sha256(b"UNSTAMPED\n").hexdigest(),)
    monkeypatch.setattr(demo, "UNSTAMPED_SHA256", dict.fromkeys(demo.TASK_FILES, earlier))
    out = _folder(tmp_path / "data", files)
    before = tree_state(out)
    result = invoke("demo", "data", "-o", out)
    if needle is None:
        assert result.exit_code == 0, result.output
        assert {p.name for p in out.iterdir()} == {*demo.TASK_FILES, demo.TASK_STAMP}
        assert (out / "train.jsonl").read_bytes().startswith(b'{"messages"')
    else:
        one_line_error(result, f"{out}: exists and is not the demo's data folder", needle, "pass another folder (-o)")
        assert tree_state(out) == before
