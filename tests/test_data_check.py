"""`edgeft data check`: a fixture with planted problems is reported line by line; --fix removes exactly those."""

from __future__ import annotations

import json

import pytest

from edgeft.data.check import check_dataset, fix
from convert.common.jsonl import scan_jsonl
from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.hostile import GOOD, HOSTILE_LINES, NEEDLES, _good, error_line, invoke, one_line_error, tree_state

SYSTEM = "You extract places. Answer with JSON only."
INSTRUCTION = "Extract the city and country from this sentence: "

SENTENCES = [
    ("Last summer we rented a small flat near the old harbour in Lisbon and walked everywhere.", "Lisbon", "Portugal"),
    ("My cousin studies marine biology at a university in Bergen, where it rains most days.", "Bergen", "Norway"),
    ("The conference on soil science took place in Nairobi during the first week of March.", "Nairobi", "Kenya"),
    ("She opened a bakery selling rye bread and cinnamon rolls in the centre of Krakow.", "Krakow", "Poland"),
    ("Our train from the coast arrived in Montreal two hours late because of the snow.", "Montreal", "Canada"),
    ("He spent a year teaching mathematics to teenagers at a school in Valparaiso.", "Valparaiso", "Chile"),
    ("The museum in Osaka has a room full of ceramic teapots from the Edo period.", "Osaka", "Japan"),
    ("We bought spices and copper lanterns at the covered market in Marrakesh.", "Marrakesh", "Morocco"),
]
EVAL_SENTENCES = [
    ("A jazz festival fills the streets of New Orleans every spring with brass bands.", "New Orleans", "United States"),
    ("The ferry to the islands leaves from the port of Piraeus near Athens at dawn.", "Athens", "Greece"),
    ("Engineers in Eindhoven tested the new bicycle lights on a rainy November night.", "Eindhoven", "Netherlands"),
]


def conversation(sentence: str, city: str, country: str, *, answer: str | None = None) -> dict:
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": INSTRUCTION + sentence},
        {"role": "assistant", "content": answer or json.dumps({"city": city, "country": country})},
    ]}


def planted_fixture(tmp_path):
    """train.jsonl with one planted problem per line listed in PLANTED; everything else is clean."""
    lines = [json.dumps(conversation(*s)) for s in SENTENCES]  # lines 1-8
    lines.insert(6, '{"messages": [{"role": "user", "content": "broken"')  # line 7: bad JSON
    # line 10: exact duplicate of line 2
    lines.append(json.dumps(conversation(*SENTENCES[1])))
    # line 11: near-duplicate of line 1, with typos
    typos = "Last sumer we rented a smal flat near the old harbor in Lisbon and walked everywere."
    lines.append(json.dumps(conversation(typos, "Lisbon", "Portugal")))
    # line 12: eval example 2 leaked into train
    lines.append(json.dumps(conversation(*EVAL_SENTENCES[1])))
    # line 13: an answer that is not JSON
    lines.append(json.dumps(conversation(
        "Tourists queue for hours to see the clock tower in Prague's old town square.", "Prague", "Czechia",
        answer="The city is Prague, in Czechia.")))
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    evals = tmp_path / "eval.jsonl"
    evals.write_text("\n".join(json.dumps(conversation(*s)) for s in EVAL_SENTENCES) + "\n")
    return train, evals


PLANTED = {7: "schema", 10: "duplicate", 11: "near-duplicate", 12: "contaminated", 13: "format"}


def test_planted_problems_reported_line_by_line(tmp_path):
    train, evals = planted_fixture(tmp_path)
    report = check_dataset(train, eval_path=evals, fmt="json")
    found = {(f.line, f.kind) for f in report.findings() if f.path == str(train)}
    assert found == set(PLANTED.items())
    text = "\n".join(report.lines())
    assert f"{train}:7: error: invalid JSON" in text
    assert f"{train}:10: error: exact duplicate of {train}:2" in text
    assert f"{train}:11: warning: near-duplicate of {train}:1" in text
    assert f"{train}:12: error: contains the user turn of eval example {evals}:2" in text
    assert f"{train}:13: error: assistant turn 2 is not valid JSON" in text
    assert report.stats["examples"] == 12 and report.stats["lines"] == 13
    # The system prompt and the instruction are shared by every train and eval example: not contamination.
    assert len([f for f in report.errors if f.kind == "contaminated"]) == 1


def test_fix_removes_exactly_the_planted(tmp_path):
    train, evals = planted_fixture(tmp_path)
    before = train.read_bytes()
    report = check_dataset(train, eval_path=evals, fmt="json")
    out, dropped = fix(report, tmp_path / "clean.jsonl")
    assert dropped == 4
    kept = [r.line for r in scan_jsonl(train) if r.line not in {7, 10, 12, 13}]
    assert [json.loads(l) for l in out.read_text().splitlines()] == [
        json.loads(r.raw) for r in scan_jsonl(train) if r.line in kept
    ]
    out2, dropped2 = fix(report, tmp_path / "clean2.jsonl", drop_near_dups=True)
    assert dropped2 == 5
    assert len(out2.read_text().splitlines()) == 13 - 5
    assert train.read_bytes() == before
    clean = check_dataset(out2, eval_path=evals, fmt="json")
    assert not clean.errors and not clean.warnings


def test_fix_refuses_to_overwrite_input(tmp_path):
    train, evals = planted_fixture(tmp_path)
    with pytest.raises(EdgeftError, match="overwrite"):
        fix(check_dataset(train), train)


def test_template_problems_are_errors_per_line(tmp_path):
    from tests.factory import build_tokenizer

    train, _ = planted_fixture(tmp_path)
    # Gemma's template refuses a system turn: every valid example is reported, by line.
    gemma = check_dataset(train, tokenizer_dir=build_tokenizer("spm-gemma"))
    assert {f.line for f in gemma.errors if f.kind == "template"} == set(range(1, 14)) - {7}
    assert all("System role not supported" in f.message for f in gemma.errors if f.kind == "template")
    # A template that drops the answers would train on nothing: caught before training.
    drops = "{% for m in messages %}{% if m.role != 'assistant' %}{{ m.content }}\n{% endif %}{% endfor %}"
    report = check_dataset(train, tokenizer_dir=build_tokenizer("bpe-qwen2"), chat_template=drops)
    messages = {f.message for f in report.errors if f.kind == "template"}
    assert messages == {"assistant turn 2 does not appear in the rendered chat (the template rewrites it); "
                        "use a template that renders the content as is"}


# ---- hostile input -------------------------------------------------------------------------------------------------

@pytest.mark.hostile
@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    one_line_error(invoke("data", "check", path), "train.jsonl: empty, no conversations")


@pytest.mark.hostile
def test_empty_eval_file_is_an_error(tmp_path):
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(GOOD + "\n")
    evals.write_text("")
    one_line_error(invoke("data", "check", train, "--eval", evals), "eval.jsonl: empty")


@pytest.mark.hostile
@pytest.mark.parametrize("kind", sorted(HOSTILE_LINES))
def test_hostile_line_is_a_finding_with_its_line(tmp_path, kind):
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([_good(i) for i in range(3)] + [HOSTILE_LINES[kind], _good(3)]) + "\n")
    before = tree_state(path)
    result = invoke("data", "check", path, "--tokenizer", build_model("qwen2"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith(f"{path}:4: error: ") and NEEDLES[kind] in errors[0], errors
    assert "4 examples (5 lines)" in result.output
    fixed = tmp_path / "fixed.jsonl"
    assert invoke("data", "check", path, "--fix", fixed).exit_code == 1
    assert fixed.read_text().splitlines() == [_good(i) for i in range(4)]  # --fix drops it; the rest as they were
    assert tree_state(path) == before


@pytest.mark.hostile
def test_invalid_byte_deep_in_a_file_is_placed_exactly(tmp_path):
    path = tmp_path / "train.jsonl"
    head = "".join(_good(i) + "\n" for i in range(499)).encode()
    bad_line = _good(499).encode()
    cut = bad_line.index(b"blue")
    path.write_bytes(head + bad_line[:cut] + b"\xff" + bad_line[cut:] + b"\n" + _good(500).encode() + b"\n")
    result = invoke("data", "check", path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if ": error: " in line]
    column = len(bad_line[:cut].decode()) + 1
    assert errors == [f"{path}:500: error: not UTF-8: byte 0xff at column {column} (byte {len(head) + cut} of the "
                      "file); re-encode the file as UTF-8"]
    assert "500 examples (501 lines)" in result.output  # the lines after it are still read


@pytest.mark.hostile
@pytest.mark.parametrize("target", ["eval", "eval-symlink", "train-symlink"])
def test_fix_never_writes_over_an_input(tmp_path, target):
    """--fix onto the --eval file replaced the eval set with the cleaned training set, exit 0."""
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text("".join(_good(i) + "\n" for i in range(3)))
    evals.write_text(GOOD.replace("the box", "the lid") + "\n")
    fix = {"eval": evals, "eval-symlink": tmp_path / "link.jsonl", "train-symlink": tmp_path / "link.jsonl"}[target]
    if target.endswith("symlink"):
        fix.symlink_to(evals if target.startswith("eval") else train)
    before = tree_state(train, evals)
    error_line(invoke("data", "check", train, "--eval", evals, "--fix", fix), f"--fix {fix}: is the",
               "write the output somewhere else")
    assert tree_state(train, evals) == before
