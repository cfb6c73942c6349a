"""Near-duplicates, decontamination, sample.md, split, and the `edgeft data` commands through CliRunner."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from edgeft.data import dedup
from edgeft.data.decontam import EvalText, find_contamination
from edgeft.data.sample import TRAIN_CLOSE, TRAIN_OPEN, write_sample
from edgeft.data.split import split_dataset
from convert.common.errors import EdgeftError
from tests.factory import build_tokenizer
from tests.hostile import _folder, invoke, one_line_error, tree_state
from tests.test_data_check import PLANTED, planted_fixture
from tests.train_helpers import toy_data

WORDS = ("river stone lamp garden copper window market winter violin tunnel harbor pepper engine ladder "
         "cotton meadow signal lantern basket orbit").split()


def random_text(rng: random.Random, n_words: int = 40) -> str:
    return " ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n_words))


def add_typos(rng: random.Random, text: str, n: int) -> str:
    chars = list(text)
    for _ in range(n):
        i = rng.randrange(len(chars))
        chars[i] = "x" if chars[i] != "x" else "y"
    return "".join(chars)


def test_near_duplicates_match_exact_jaccard_brute_force():
    rng = random.Random(1)
    texts = [dedup.normalize_text(random_text(rng)) for _ in range(120)]
    planted = {}
    for original in range(0, 120, 12):
        planted[len(texts)] = original
        texts.append(add_typos(rng, texts[original], 3))
    found = {d.index: d.original for d in dedup.near_duplicates(texts, 0.8)}
    brute = {j for i in range(len(texts)) for j in range(i + 1, len(texts)) if dedup.jaccard(texts[i], texts[j]) >= 0.8}
    assert found == planted
    assert set(found) == brute


def test_data_check_and_retrieval_normalise_with_one_function():
    """One rule per fact: the ladder's retrieval filter and data check judge near-duplicates on the same text form,
    and the ASCII fast path agrees with the general one for every ASCII character (control characters included)."""
    import unicodedata

    from convert.common import normalize
    from runtime import retrieval

    assert dedup.normalize_text is retrieval.normalize_text is normalize.normalize_text
    for code in range(128):
        text = f"Ab{chr(code)}c_D"
        general = " ".join(normalize._PUNCTUATION.sub(" ", unicodedata.normalize("NFKC", text).lower()).split())
        assert normalize.normalize_text(text) == general, hex(code)
    question = "What is the Capital of France?"
    assert retrieval.jaccard(question, "what is the capital of france") == 1.0
    assert retrieval.jaccard(question, "Why?") == dedup.jaccard(dedup.normalize_text(question), "why")


def test_near_duplicate_groups_are_transitive_and_keep_the_first():
    base = "the quick brown fox jumps over the lazy dog near the quiet river bank at dawn"
    texts = [base, "completely different words about copper lanterns", base + " today", base + " today!"]
    texts = [dedup.normalize_text(t) for t in texts]
    found = dedup.near_duplicates(texts, 0.8)
    assert {(d.index, d.original) for d in found} == {(2, 0), (3, 0)}
    assert dedup.group_ids(4, found) == [0, 1, 0, 0]


def test_contamination_exact_ngram_and_shared_boilerplate():
    norm = dedup.normalize_text
    instruction = "Summarise the following customer review in one short sentence please: "
    reviews = [random_text(random.Random(seed), 40) for seed in range(4)]
    evals = [EvalText(i, "user turn", norm(instruction + r)) for i, r in enumerate(reviews[:3])]
    evals.append(EvalText(0, "gold answer", norm("Good value.")))
    evals.append(EvalText(1, "gold answer", norm("Good value.")))
    words = reviews[0].split()
    train = [
        [norm(instruction + reviews[3]), norm("Good value.")],  # shares instruction and answer: not a leak
        [norm(" ".join(words[:15]) + " and then something else entirely")],  # a 15-word quote: below the bar
        [norm("Context: " + reviews[1][: len(reviews[1]) * 3 // 4] + " and more"), norm("x")],  # partial copy
        [norm(instruction + reviews[2])],  # exact copy of eval 2's user turn
    ]
    found = {(c.train_index, c.eval_index): c.how for c in find_contamination(train, evals)}
    assert set(found) == {(2, 1), (3, 2)}
    assert found[(3, 2)] == "exact match"
    assert found[(2, 1)].startswith("13-gram overlap")


def test_split_keeps_near_duplicates_on_one_side(tmp_path):
    rng = random.Random(0)
    lines = []
    for i in range(60):
        question = random_text(rng, 15)
        lines.append(json.dumps({"messages": [{"role": "user", "content": question},
                                              {"role": "assistant", "content": f"answer {i}"}]}))
        if i % 6 == 0:  # a paraphrase with typos right after, and an exact copy
            lines.append(json.dumps({"messages": [{"role": "user", "content": add_typos(rng, question, 2)},
                                                  {"role": "assistant", "content": f"answer {i}"}]}))
            lines.append(lines[-2])
    source = tmp_path / "all.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = split_dataset(source, tmp_path / "out", eval_frac=0.2, seed=3)
    train = (tmp_path / "out" / "train.jsonl").read_text().splitlines()
    evals = (tmp_path / "out" / "eval.jsonl").read_text().splitlines()
    assert sorted(train + evals) == sorted(lines)
    assert abs(len(evals) - 0.2 * len(lines)) <= 3 and result["eval"] == len(evals)
    train_users = {dedup.normalize_text(json.loads(l)["messages"][0]["content"]) for l in train}
    for line in evals:
        user = dedup.normalize_text(json.loads(line)["messages"][0]["content"])
        assert all(dedup.jaccard(user, other) < 0.8 for other in train_users)
    with pytest.raises(EdgeftError, match="not empty"):
        split_dataset(source, tmp_path / "out")


def test_sample_marks_exactly_the_trained_spans(tmp_path):
    train, _ = planted_fixture(tmp_path)
    out = write_sample(train, tmp_path / "sample.md", n=3, seed=1, tokenizer_dir=build_tokenizer("bpe-qwen2"))
    text = out.read_text()
    assert text.count("## ") == 3 and "lines with errors were left out" in text
    body = text[text.index("## "):]
    marked = [chunk.split(TRAIN_CLOSE)[0] for chunk in body.split(TRAIN_OPEN)[1:]]
    assert len(marked) == 3
    assert all(m.startswith(('{"city"', "The city")) and m.endswith("<|im_end|>") for m in marked), marked
    plain = write_sample(train, tmp_path / "plain.md", n=50).read_text()
    assert plain.count("## ") == 12 and "<|im_start|>assistant\n" + TRAIN_OPEN in plain


def test_cli_check_exit_codes_and_fix(tmp_path):
    train, evals = planted_fixture(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["data", "check", str(train), "--eval", str(evals), "--format", "json",
                                  "--fix", str(tmp_path / "clean.jsonl"), "--drop-near-dups"])
    assert result.exit_code == 1
    reported = [l for l in result.output.splitlines() if l.startswith(f"{train}:") and ": error: " in l or ": warning: " in l]
    assert [int(l.split(":")[1]) for l in reported] == sorted(PLANTED)
    clean = runner.invoke(main, ["data", "check", str(tmp_path / "clean.jsonl"), "--eval", str(evals),
                                 "--format", "json", "--strict"])
    assert clean.exit_code == 0, clean.output
    # Warnings alone pass unless --strict.
    no_errors = tmp_path / "warn.jsonl"
    no_errors.write_text("".join(l + "\n" for i, l in enumerate(train.read_text().splitlines(), 1) if i in (1, 11)))
    assert runner.invoke(main, ["data", "check", str(no_errors)]).exit_code == 0
    assert runner.invoke(main, ["data", "check", str(no_errors), "--strict"]).exit_code == 1
    assert "needs --tokenizer" in runner.invoke(main, ["data", "check", str(no_errors), "--max-len", "5"]).output


def test_cli_check_with_tokenizer_reports_lengths(tmp_path):
    train, _ = planted_fixture(tmp_path)
    result = CliRunner().invoke(main, ["data", "check", str(train), "--tokenizer", str(build_tokenizer("bpe-llama3")),
                                       "--max-len", "40"])
    assert "chat-rendered tokens min" in result.output
    too_long = [l for l in result.output.splitlines() if "> --max-len 40" in l]
    assert len(too_long) == 12  # every valid example (the exact duplicate too) is longer than 40 tokens


@pytest.mark.parametrize("kind", ["bpe-llama3", "spm-mistral", "spm-gemma"])
def test_fast_token_lengths_equal_the_ids_training_feeds(kind, monkeypatch):
    """Batched counts equal the per-text ids training feeds (`chat_ids`: no added specials, then the BOS llama.cpp
    adds when the text does not start with it: "<s>[INST]..." keeps its one BOS)."""
    from runtime.hf_tokenizer import chat_ids
    from edgeft.data import check
    from edgeft.data.check import token_lengths
    from edgeft.data.masking import load_tokenizer

    tokenizer = load_tokenizer(build_tokenizer(kind))
    texts = [" lone leading space", "<s>[INST] Hi [/INST]Yo</s>", "<start_of_turn>user\nx<end_of_turn>\n", "é\n\n  a"]
    monkeypatch.setattr(check, "TOKENIZE_BATCH", 3)  # two batches, the second one short
    assert token_lengths(tokenizer, texts) == [len(chat_ids(tokenizer, t)) for t in texts]


def test_cli_sample_and_split(tmp_path):
    train, _ = planted_fixture(tmp_path)
    clean = tmp_path / "clean.jsonl"
    clean.write_text("".join(l + "\n" for i, l in enumerate(train.read_text().splitlines(), 1) if i not in PLANTED))
    runner = CliRunner()
    result = runner.invoke(main, ["data", "sample", str(clean), "-n", "2", "--seed", "5", "-o", str(tmp_path / "s.md")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.md").read_text().count(TRAIN_OPEN) == 3  # the legend and two examples
    result = runner.invoke(main, ["data", "split", str(clean), "--eval-frac", "0.25", "-o", str(tmp_path / "split")])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "split" / "split.json").read_text())
    assert (summary["train"], summary["eval"]) == (6, 2)
    bad = runner.invoke(main, ["data", "split", str(train), "-o", str(tmp_path / "split2")])
    assert bad.exit_code == 1 and f"{train}:7: invalid JSON" in bad.output
    assert not (tmp_path / "split2").exists()


# ---- hostile input -------------------------------------------------------------------------------------------------

@pytest.mark.hostile
def test_split_into_the_folder_of_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(tmp_path / "data")
    one_line_error(invoke("data", "split", train, "-o", tmp_path / "data", "--overwrite"), "holds the input file")
    assert tree_state(tmp_path / "data") == before


@pytest.mark.hostile
def test_sample_over_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(train)
    one_line_error(invoke("data", "sample", train, "-n", "2", "-o", train), "is the input file itself")
    assert tree_state(train) == before


# (what the output folder holds, the refusal's needle or None when --overwrite may replace it)
SPLIT_FOLDERS = [
    ({}, None),
    ({"train.jsonl": "old\n", "eval.jsonl": "old\n", "split.json": "{}"}, None),
    ({".train.jsonl.99999999-abcd.edgeft-tmp": ""}, None),  # a killed write's temporary
    ({"train.jsonl": "old\n", "notes.txt": "mine"}, "holds notes.txt, which this command does not write"),
    ({".env": "SECRET=1"}, "holds .env"),
    ({"eval.jsonl": "/"}, "holds eval.jsonl"),  # a folder of that name is not the file a split writes
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", SPLIT_FOLDERS)
def test_split_overwrite_replaces_only_a_split(tmp_path, files, needle):
    from edgeft.data.split import SPLIT_FILES

    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "rocket"]
    train = tmp_path / "all.jsonl"
    train.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"{a} {b} {a}?"},
                                                      {"role": "assistant", "content": f"{b} {a} {b}."}]}) + "\n"
                             for a, b in zip(words, reversed(words))))
    out = _folder(tmp_path / "out", files)
    before = tree_state(out)
    result = invoke("data", "split", train, "-o", out, "--overwrite", "--eval-frac", "0.25")
    if needle is None:
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == sorted(SPLIT_FILES)  # the table is what a split writes
    else:
        one_line_error(result, f"{out}: exists and is not an edgeft data split", needle, "choose another -o")
        assert tree_state(out) == before


@pytest.mark.hostile
@pytest.mark.parametrize("command", [["sample", "-n", "2", "-o", "{tmp}/s.md"], ["split", "-o", "{tmp}/split"]])
def test_sample_and_split_refuse_an_empty_file(tmp_path, command):
    path = tmp_path / "all.jsonl"
    path.write_text("")
    args = [part.format(tmp=tmp_path) for part in command]
    one_line_error(invoke("data", args[0], path, *args[1:]), "empty, no conversations")


@pytest.mark.hostile
def test_split_that_leaves_nothing_to_train_on_says_why(tmp_path):
    """--eval-frac 0.99 of 20 distinct examples rounds to all 20: it was called 'every example is a near-duplicate'."""
    path = tmp_path / "all.jsonl"
    words = "apple banana cherry delta echo foxtrot golf hotel india juliet kilo lima mike november oscar".split()
    draw = random.Random(1)
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"{i} {' '.join(draw.sample(words, 6))}?"},
        {"role": "assistant", "content": " ".join(draw.sample(words, 5))}]}) + "\n" for i in range(20)))
    one_line_error(invoke("data", "split", path, "-o", tmp_path / "split", "--eval-frac", "0.99"),
                   "--eval-frac 0.99 puts all 20 conversations on the eval side", "lower --eval-frac")
    assert not (tmp_path / "split").exists()
