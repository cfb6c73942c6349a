"""Reading conversation JSONL and finding/rendering chat templates."""

from __future__ import annotations

import json

import pytest

from convert.common.jsonl import read_conversations, scan_jsonl, validate_messages
from edgeft.data.templates import CHATML_TEMPLATE, TemplateRenderError, render_chat, template_for
from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.hostile import GOOD, HOSTILE_LINES, NEEDLES, invoke, one_line_error


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


@pytest.mark.parametrize("obj, expected", [
    ({"text": "hi"}, 'missing "messages"'),
    ({"messages": []}, "non-empty list"),
    (msgs(("user", "hi"), ("bot", "yo")), "unknown role 'bot'"),
    (msgs(("user", "hi"), ("assistant", "  ")), "message 1 (assistant): empty content"),
    (msgs(("system", "s"), ("user", "hi")), "no assistant turn"),
    (msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "does not end with an assistant turn"),
    (msgs(("user", "a"), ("user", "b"), ("assistant", "c")), "roles out of order: user at position 1"),
    (msgs(("assistant", "a"), ("user", "b"), ("assistant", "c")), "roles out of order: assistant at position 0"),
    (msgs(("user", "a"), ("system", "b"), ("assistant", "c")), "system message at position 1"),
])
def test_schema_problems(obj, expected):
    problems = validate_messages(obj)
    assert any(expected in p for p in problems), problems


def test_valid_conversations_pass():
    assert validate_messages(msgs(("system", "s"), ("user", "a"), ("assistant", "b"))) == []
    assert validate_messages(msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))) == []


def test_read_conversations_stops_at_first_bad_line_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    good = json.dumps(msgs(("user", "a"), ("assistant", "b")))
    path.write_text(f"{good}\n\n{good}\nnot json\n")
    with pytest.raises(EdgeftError, match=rf"^{path}:4: invalid JSON"):
        read_conversations(path)
    assert [r.line for r in scan_jsonl(path)] == [1, 3, 4]  # blank lines are skipped, numbering is the file's
    path.write_text(f"{good}\n{good}\n")
    assert read_conversations(path)[1]["messages"][1]["content"] == "b"


def test_missing_and_non_utf8_files(tmp_path):
    with pytest.raises(EdgeftError, match="no such file"):
        read_conversations(tmp_path / "nope.jsonl")
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    # scan_jsonl never stops at a bad line: the undecodable line is a record with its place; the reader refuses it.
    (record,) = scan_jsonl(bad)
    assert record.line == 1 and record.problems == ["not UTF-8: byte 0xe9 at column 4 (byte 3 of the file); "
                                                    "re-encode the file as UTF-8"]
    with pytest.raises(EdgeftError, match=r"latin1.jsonl:1: not UTF-8: byte 0xe9 at column 4"):
        read_conversations(bad)


def test_template_for_model_folder(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "CFG"}))
    assert template_for(tmp_path) == "CFG"
    (tmp_path / "chat_template.jinja").write_text("FILE")
    assert template_for(tmp_path) == "FILE"  # transformers 5 saves the template beside the config
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EdgeftError, match="no chat template"):
        template_for(empty)
    assert template_for(empty, default=CHATML_TEMPLATE) == CHATML_TEMPLATE
    (empty / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "TOOLS"}, {"name": "default", "template": "DEFAULT"}]}))
    assert template_for(empty) == "DEFAULT"


def test_render_matches_hf_conventions():
    template = "{{ bos_token }}{% for m in messages %}{{ m.content | tojson }}{% endfor %}{{ raise_exception('no') if not messages }}"
    assert render_chat(template, [{"role": "user", "content": "<a>&é"}], special_tokens={"bos_token": "<s>"}) == '<s>"<a>&é"'
    with pytest.raises(TemplateRenderError, match="no"):
        render_chat(template, [])
    assert render_chat("{{ strftime_now('%Y') | length }}", []) == "4"
    # A `{% generation %}` block renders its body (the mask does not depend on it).
    assert render_chat("{% generation %}x{% endgeneration %}", []) == "x"


def test_templates_run_in_a_sandbox():
    with pytest.raises(TemplateRenderError):
        render_chat("{{ messages.__class__.__mro__ }}", [])
    with pytest.raises(TemplateRenderError):
        render_chat("{% set x = messages.append(1) %}", [])  # immutable sandbox: no mutation of inputs


def test_template_syntax_error_is_one_line():
    with pytest.raises(EdgeftError, match="syntax error"):
        render_chat("{% for %}", [])


def test_byte_order_mark_and_crlf_are_tolerated(tmp_path):
    path = tmp_path / "bom.jsonl"
    line = json.dumps(msgs(("user", "a"), ("assistant", "b")))
    path.write_bytes(b"\xef\xbb\xbf" + (line + "\r\n" + line + "\r\n").encode())
    assert len(read_conversations(path)) == 2


# ---- hostile input through every command that reads data -----------------------------------------------------------

@pytest.mark.hostile
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


@pytest.mark.hostile
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
