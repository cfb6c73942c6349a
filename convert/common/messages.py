"""The chat message schema every stage accepts: one table of roles, and the one reading of tool calls.

Serve (runtime.serve.protocol), eval and chat (runtime.examples), data check and training (convert.common.jsonl) all take
a message through `normalize_message`, so a role or a tool call one of them accepts is one they all accept, and a
message is never passed on with a field silently dropped: what the chat template can render (content, name,
tool_calls, tool_call_id) is kept, the rest is refused by name.

Tool calls are kept in the form Hugging Face chat templates read (Qwen2.5, Llama 3.1, Mistral, Hermes): an assistant
message's `tool_calls` is a list of `{"type": "function", "function": {"name", "arguments"}}` with `arguments` an
object. OpenAI clients send `arguments` as a JSON string and the legacy `function_call` / "function" role; both are
read into that form here (vLLM and llama-server parse the string too, since templates `tojson` the arguments).

A shared leaf: runtime/ imports it, so it imports nothing heavy and nothing from edgeft but the errors.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = ("system", "user", "assistant", "tool")
# Other names clients send for a role above: OpenAI's newer name for system, and its legacy function-result role.
ROLE_ALIASES = {"developer": "system", "function": "tool"}
# Keys a message may carry besides role and content, per role; any other key (not null) is refused, never dropped.
EXTRA_KEYS = {"system": ("name",), "user": ("name",), "assistant": ("name", "tool_calls", "function_call"),
              "tool": ("name", "tool_call_id")}


class MessageError(ValueError):
    """One message breaks the schema; the text says what and what to do (the caller adds where)."""


def allowed_roles() -> str:
    return ", ".join(ROLES)


def role_of(message: dict, index: int) -> str:
    role = message.get("role")
    if not isinstance(role, str):
        raise MessageError(f"message {index} has no role; give each message one of: {allowed_roles()}")
    role = ROLE_ALIASES.get(role, role)
    if role not in ROLES:
        raise MessageError(f"message {index}: unknown role {role[:40]!r}; allowed roles: {allowed_roles()}")
    return role


def _arguments(value: Any, where: str) -> dict:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            raise MessageError(f"{where}.arguments is not JSON; send the arguments as a JSON object") from None
    if not isinstance(value, dict):
        raise MessageError(f"{where}.arguments must be a JSON object (the function's named arguments)")
    return value


def _tool_call(call: Any, where: str) -> dict:
    if not isinstance(call, dict):
        raise MessageError(f"{where} must be an object {{\"type\": \"function\", \"function\": {{...}}}}")
    if call.get("type", "function") != "function":
        raise MessageError(f"{where}.type {str(call.get('type'))[:40]!r}: only function tool calls exist")
    function = call.get("function")
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"].strip():
        raise MessageError(f"{where}.function needs a non-empty name")
    normalized = {"type": "function",
                  "function": {"name": function["name"],
                               "arguments": _arguments(function.get("arguments", {}), f"{where}.function")}}
    if call.get("id") is not None:
        if not isinstance(call["id"], str):
            raise MessageError(f"{where}.id must be a string")
        normalized["id"] = call["id"]
    return normalized


def _tool_calls(message: dict, index: int) -> list[dict] | None:
    calls = message.get("tool_calls")
    legacy = message.get("function_call")
    if calls is not None and legacy is not None:
        raise MessageError(f"message {index} has both tool_calls and function_call; send tool_calls only")
    if legacy is not None:
        calls = [{"type": "function", "function": legacy}]
    if calls is None:
        return None
    if not isinstance(calls, list) or not calls:
        raise MessageError(f"message {index}: tool_calls must be a non-empty list")
    return [_tool_call(call, f"message {index} tool_calls[{n}]") for n, call in enumerate(calls)]


def normalize_message(message: Any, index: int, *, content_optional: bool = False) -> dict:
    """`message` in the one form every stage renders: role from the table (aliases resolved), content a string,
    tool calls as templates read them. MessageError (one phrase) for anything else. A missing or null content is ""
    next to tool calls, and in any assistant message when `content_optional` (OpenAI's client echoes its answers)."""
    if not isinstance(message, dict):
        raise MessageError(f"message {index} is not an object")
    role = role_of(message, index)
    # A null field is an absent one: OpenAI's client echoes its answers back with "refusal": null and the like.
    unknown = sorted(key for key, value in message.items()
                     if value is not None and key not in {"role", "content", *EXTRA_KEYS[role]})
    if unknown:
        article = "an" if role[0] in "aeiou" else "a"
        raise MessageError(f"message {index} ({role}): unknown field {unknown[0][:40]!r}; {article} {role} message "
                           f"takes {', '.join(('content',) + EXTRA_KEYS[role])}")
    normalized: dict[str, Any] = {"role": role}
    content = message.get("content")
    calls = _tool_calls(message, index) if role == "assistant" else None
    if content is None and (calls or (content_optional and role == "assistant")):
        content = ""
    if not isinstance(content, str):
        raise MessageError(f"message {index} ({role}): content must be a string")
    normalized["content"] = content
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            if not isinstance(message[key], str):
                raise MessageError(f"message {index} ({role}): {key} must be a string")
            normalized[key] = message[key]
    if calls:
        normalized["tool_calls"] = calls
    return normalized


def normalize_tools(tools: Any) -> list[dict] | None:
    """The `tools` list (function definitions, OpenAI's and Hugging Face's shape) as templates read it."""
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools):
        raise MessageError("tools must be a list of {\"type\": \"function\", \"function\": {...}} objects")
    for n, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type", "function") != "function" or not isinstance(function, dict) \
                or not isinstance(function.get("name"), str) or not function["name"].strip():
            raise MessageError(f"tools[{n}] must be {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}")
    return tools or None
