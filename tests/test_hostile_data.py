"""Hostile input, data: an empty file is an error, not "0 examples, 0 errors"; deep nesting, giant numbers, lone
surrogates and bad bytes are FILE:LINE findings (exact line, column and byte offset), never a traceback, in
`data check`, in training's own check and in eval's reader; the input file is never modified."""

from __future__ import annotations

import json
import random

import pytest

from tests.factory import build_model
from tests.hostile import error_line, invoke, one_line_error, tree_state

GOOD = json.dumps({"messages": [{"role": "user", "content": "What colour is the box?"},
                                {"role": "assistant", "content": "The box is blue."}]})


def _good(i: int) -> str:
    return GOOD.replace("the box", f"box {i}")


HOSTILE_LINES = {
    "nested": '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "giant-number": '{"messages": [], "n": ' + "9" * 5000 + "}",
    "surrogate": _good(9000).replace("blue", "bl\\ud800ue"),
}
NEEDLES = {"nested": "nested too deeply", "giant-number": "4300 digits", "surrogate": "lone surrogate \\ud800"}


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file_is_an_error(tmp_path, content):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    one_line_error(invoke("data", "check", path), "train.jsonl: empty, no conversations")


def test_empty_eval_file_is_an_error(tmp_path):
    train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    train.write_text(GOOD + "\n")
    evals.write_text("")
    one_line_error(invoke("data", "check", train, "--eval", evals), "eval.jsonl: empty")


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


@pytest.mark.parametrize("kind", sorted(HOSTILE_LINES) + ["bad-byte", "empty"])
def test_training_refuses_hostile_data_in_one_line(tmp_path, kind):
    path = tmp_path / "train.jsonl"
    if kind == "bad-byte":
        path.write_bytes((GOOD + "\n").encode() + b'{"messages": "\xc3\x28"}\n')
    elif kind == "empty":
        path.write_text("")
    else:
        path.write_text(GOOD + "\n" + HOSTILE_LINES[kind] + "\n")
    out = tmp_path / "run"
    line = one_line_error(invoke("train", "--base", build_model("qwen2"), "--data", path, "-o", out))
    assert ("empty" in line) if kind == "empty" else ("train.jsonl:2:" in line)
    assert not out.exists()


@pytest.mark.parametrize("kind", sorted(HOSTILE_LINES) + ["bad-byte"])
def test_eval_refuses_hostile_eval_data_in_one_line(tmp_path, kind):
    pytest.importorskip("llama_cpp")
    from convert import convert_model

    model = convert_model(build_model("llama"), tmp_path / "m.gguf", outtype="f16")
    path = tmp_path / "eval.jsonl"
    if kind == "bad-byte":
        path.write_bytes((GOOD + "\n").encode() + b'{"messages": "\xc3\x28"}\n')
    else:
        path.write_text(GOOD + "\n" + HOSTILE_LINES[kind] + "\n")
    needle = {**NEEDLES, "bad-byte": "not UTF-8: byte 0xc3 at column 15 (byte"}[kind]
    one_line_error(invoke("eval", model, "--data", path, "-o", tmp_path / "out"), "eval.jsonl:2:", needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["sample", "-n", "2", "-o", "{tmp}/s.md"], ["split", "-o", "{tmp}/split"]])
def test_sample_and_split_refuse_an_empty_file(tmp_path, command):
    path = tmp_path / "all.jsonl"
    path.write_text("")
    args = [part.format(tmp=tmp_path) for part in command]
    one_line_error(invoke("data", args[0], path, *args[1:]), "empty, no conversations")


# ---- found in the sweep of the newer commands (each one mishandled before) ----------------------------------

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


# A folder that is not a tokenizer: what the one line says (transformers' own message is a six-line list).
NOT_A_TOKENIZER = [
    ({}, "no tokenizer in this folder (none of tokenizer.json, tokenizer.model, tokenizer_config.json)"),
    ({"tokenizer.json": "garbage"}, "cannot load a tokenizer (JSONDecodeError: Expecting value"),
]


@pytest.mark.parametrize("files, needle", NOT_A_TOKENIZER)
@pytest.mark.parametrize("command", [["check"], ["sample", "-o", "{tmp}/s.md"]])
def test_a_folder_that_is_not_a_tokenizer_is_one_line(tmp_path, files, needle, command):
    pytest.importorskip("transformers")
    path = tmp_path / "train.jsonl"
    path.write_text(GOOD + "\n")
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    args = [part.format(tmp=tmp_path) for part in command]
    one_line_error(invoke("data", args[0], path, *args[1:], "--tokenizer", folder), f"{folder}: ", needle)
    assert not (tmp_path / "s.md").exists()


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
