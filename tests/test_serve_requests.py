"""`edgeft serve` against a hostile client, without a model: every request the server cannot honour exactly is a
400 naming the field (never a 500, a traceback or a silent change of meaning), and the keys no client can send are
refused at startup. The app runs in-process over ASGI with an engine that refuses to be reached."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

pytest.importorskip("starlette")

from convert.common.errors import EdgeftError  # noqa: E402
from runtime.serve.protocol import ApiError, Limits, check_api_key, parse_json, parse_request  # noqa: E402

MODELS = ["base", "a1"]
USER = {"role": "user", "content": "hi"}


def _chat(**fields) -> dict:
    return {"model": "base", "messages": [USER], **fields}


def _refused(document: dict, kind: str = "chat") -> ApiError:
    with pytest.raises(ApiError) as refused:
        parse_request(document, kind, MODELS, Limits())
    assert refused.value.status == 400 and "\n" not in refused.value.message
    return refused.value


@pytest.mark.parametrize("key, words", [("", "is empty"), (" ", "is blank"), ("\t\n", "is blank"),
                                        (" secret", "' ' at character 1"), ("clé", "'é' at character 3")])
def test_keys_no_client_can_send_are_refused(key, words):
    with pytest.raises(EdgeftError, match=words) as refused:
        check_api_key(key)
    assert "\n" not in str(refused.value)
    assert check_api_key("k-1.2_3~+/=") == "k-1.2_3~+/=" and check_api_key(None) is None


def test_the_cli_refuses_a_blank_key_before_loading_anything(tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    result = CliRunner().invoke(main, ["serve", str(tmp_path / "absent.gguf"), "--api-key", " "])
    assert result.exit_code != 0 and "--api-key is blank" in result.output and "Traceback" not in result.output
    # click reads an empty variable as unset: that would serve without a key while the user thinks one is set
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "absent.gguf")], env={"EDGEFT_API_KEY": ""})
    assert result.exit_code != 0 and "EDGEFT_API_KEY is empty" in result.output


@pytest.mark.parametrize("body, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"model": ' + b"9" * 5000 + b"}", "invalid JSON for us"),
    (b'{"model": "base"', "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1]", "JSON object"),
])
def test_bodies_the_parser_cannot_take_are_400(body, words):
    with pytest.raises(ApiError, match=words) as refused:
        parse_json(body)
    assert refused.value.status == 400


def test_roles_come_from_one_table():
    assert "allowed roles: system, user, assistant, tool" in _refused(
        {"model": "base", "messages": [{"role": "hacker", "content": "x"}]}).message
    request = parse_request({"model": "base", "messages": [{"role": "developer", "content": "be terse"}, USER]},
                            "chat", MODELS, Limits())
    assert [m["role"] for m in request.messages] == ["system", "user"]
    assert _refused(_chat(messages=[{**USER, "weight": 2}])).message.startswith(
        "messages[0] (user): unknown field 'weight'")
    assert "content must be a string" in _refused(_chat(messages=[{"role": "user", "content": None}])).message
    # OpenAI's client echoes its answers back with null fields: those are absent, not unknown
    echoed = {"role": "assistant", "content": "yo", "refusal": None, "audio": None, "tool_calls": None}
    parse_request(_chat(messages=[USER, echoed, USER]), "chat", MODELS, Limits())


def test_tool_calls_are_kept_in_the_form_templates_read():
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}}]
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    request = parse_request(_chat(messages=messages, tools=tools), "chat", MODELS, Limits())
    assert request.messages[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "weather", "arguments": {"city": "Paris"}}, "id": "c1"}]}
    assert request.messages[2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    assert request.messages[3]["tool_calls"][0]["function"] == {"name": "f", "arguments": {}}
    assert request.tools == tools
    bad = {**call, "function": {"name": "weather", "arguments": "{not json"}}
    assert "arguments is not JSON" in _refused(_chat(messages=[USER, {"role": "assistant", "tool_calls": [bad]}])).message
    assert "tools[0]" in _refused(_chat(tools=[{"type": "function", "function": {}}])).message


@pytest.mark.parametrize("fields, param", [
    ({"tool_choice": "required"}, "tool_choice"), ({"tool_choice": "none"}, "tool_choice"),
    ({"response_format": {"type": "json_object"}}, "response_format"), ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 10}}, "logit_bias"), ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"presence_penalty": -1}, "presence_penalty"), ({"seed": 1 << 70}, "seed"), ({"seed": "7"}, "seed"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options"), ({"temperature": float("nan")}, "temperature"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
])
def test_fields_that_would_change_the_answer_are_refused_not_ignored(fields, param):
    assert _refused(_chat(**fields)).param == param


def test_off_values_pass_and_top_p_zero_stays_zero():
    request = parse_request(_chat(logprobs=False, logit_bias={}, frequency_penalty=0, response_format={"type": "text"},
                                  tool_choice="auto", top_p=0, seed=-1), "chat", MODELS, Limits())
    assert request.sampling.top_p == 0.0 and request.sampling.seed == (1 << 64) - 1


class _Unreachable:
    names = MODELS

    def __getattr__(self, name):
        raise AssertionError(f"the engine was reached ({name}) by a request that should have been refused")


def _post(app, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    """One POST /v1/chat/completions through the ASGI app, no socket."""
    sent, chunks = [], [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "root_path": "", "scheme": "http", "server": ("127.0.0.1", 80),
             "client": ("127.0.0.1", 1), "http_version": "1.1", "asgi": {"version": "3.0"},
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


def test_hostile_bodies_through_the_app_are_400_without_a_traceback(caplog):
    from runtime.serve.app import build_app

    app = build_app(_Unreachable(), api_key="k")
    auth = {"Authorization": "Bearer k"}
    with caplog.at_level(logging.DEBUG):
        for body, status in [(b"[" * 100_000, 400), (b"{" * 50_000, 400), (json.dumps(_chat(messages=[
                {"role": "hacker", "content": "x"}])).encode(), 400), (b"{}", 400)]:
            assert _post(app, body, auth)[0] == status
        assert _post(app, b"{}", {"Authorization": "Bearer "})[0] == 401
        assert _post(app, b"{}")[0] == 401
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    with pytest.raises(EdgeftError, match="empty"):
        build_app(_Unreachable(), api_key="")
