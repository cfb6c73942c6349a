"""The OpenAI request bodies we accept, checked field by field, and the response objects we send back.

A request the server cannot honour exactly is refused with the field's name (400) rather than half-served: `n`
other than 1, a `max_tokens` over the server's limit, a `stop` list longer than OpenAI's four. Fields we do not
use (`user`, `frequency_penalty` at 0, `logit_bias` empty...) are ignored, as the OpenAI clients send some of them.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

from convert.common.jsonl import parse_json_line
from convert.common.messages import MessageError, normalize_message, normalize_tools
from convert.common.errors import EdgeftError
from runtime.serve.engine import Sampling


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def check_api_key(key: str | None, option: str = "--api-key") -> str | None:
    """The key a server requires, refused when no client could send it: empty lets an empty bearer in, and
    whitespace or characters outside printable ASCII do not survive an Authorization header, locking everyone out."""
    if key is None:
        return None
    if not key.strip():
        raise EdgeftError(f"{option} is {'empty' if not key else 'blank'}: no client could send it as a bearer "
                          "token; pass a real key, or leave the option (and EDGEFT_API_KEY) out to serve without one")
    bad = next((c for c in key if not "!" <= c <= "~"), None)
    if bad is not None:
        raise EdgeftError(f"{option}: the key holds {bad!r} at character {key.index(bad) + 1}; an Authorization "
                          "header carries printable ASCII without spaces only, so use letters, digits and -._~+/=")
    return key


@dataclass
class Limits:
    max_tokens: int = 2048  # per request; also the default when a request names none
    max_body_bytes: int = 1 << 20
    max_queue: int = 64


@dataclass
class Request:
    model: str
    kind: str  # "chat" | "completion"
    stream: bool
    sampling: Sampling
    messages: list[dict] = field(default_factory=list)
    tools: list[dict] | None = None
    prompt: str = ""
    include_usage: bool = False


def parse_json(body: bytes) -> dict:
    """The body as a JSON object; 400 for anything else, including what the parser itself cannot take (nesting
    deeper than its recursion limit, an integer longer than Python converts), which would otherwise be a 500."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the request body is not UTF-8 ({exc.reason} at byte {exc.start})",
                       code="invalid_json") from None
    document, problem = parse_json_line(text)
    if problem is not None:
        raise ApiError(400, f"the request body is {problem}", code="invalid_json")
    if not isinstance(document, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return document


def _number(document, name, default, low, high, *, integer=False):
    value = document.get(name, default)
    if value is None:
        value = default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not low <= value <= high:
        what = "an integer" if integer else "a number"
        raise ApiError(400, f"{name} must be {what} from {low} to {high}, got {value!r}", param=name)
    return value


def parse_request(document: dict, kind: str, known_models: list[str], limits: Limits) -> Request:
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required: the base's or an adapter's name (GET /v1/models lists them)",
                       param="model")
    if model not in known_models:
        raise ApiError(404, f"model {model!r} is not served here; known models: {', '.join(known_models)}",
                       param="model", code="model_not_found")
    if document.get("n", 1) not in (1, None):
        raise ApiError(400, "n must be 1: this server returns one choice per request", param="n")
    name = "max_completion_tokens" if document.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _number(document, name, limits.max_tokens, 1, limits.max_tokens, integer=True)
    stop = document.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a string or a list of at most 4 non-empty strings", param="stop")
    seed = document.get("seed")
    if seed is not None:  # numpy's generator takes 0 to 2**128-1; OpenAI's seed is any int64
        seed = _number(document, "seed", None, -(1 << 63), (1 << 63) - 1, integer=True) % (1 << 64)
    _refuse_unsupported(document)
    # top_p 0 keeps the one most likely token (engine._choose), as OpenAI's does: it is not "unset".
    sampling = Sampling(max_tokens=max_tokens,
                        temperature=float(_number(document, "temperature", 1.0, 0, 2)),
                        top_p=float(_number(document, "top_p", 1.0, 0, 1)),
                        seed=seed, stop=tuple(stop))
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = document.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise ApiError(400, "stream_options must be an object whose include_usage is true or false",
                       param="stream_options")
    request = Request(model=model, kind=kind, stream=stream, sampling=sampling,
                      include_usage=bool(options.get("include_usage")))
    if kind == "chat":
        request.messages = _messages(document.get("messages"))
        request.tools = _tools(document)
    else:
        request.prompt = _prompt(document.get("prompt"))
    return request


def _messages(messages) -> list[dict]:
    """The conversation in the one message schema (convert.common.messages): roles from its table, tool calls kept
    for the template to render; any message it refuses is a 400 naming the message and the allowed roles."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    checked = []
    for index, message in enumerate(messages):
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            # the content-parts form: only text parts can be rendered by a template
            parts = message["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in parts):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported", param="messages")
            message = {**message, "content": "".join(part["text"] for part in parts)}
        try:
            checked.append(normalize_message(message, index, content_optional=True))
        except MessageError as exc:
            raise ApiError(400, str(exc).replace(f"message {index}", f"messages[{index}]", 1),
                           param="messages") from None
    return checked


def _tools(document: dict) -> list[dict] | None:
    try:
        tools = normalize_tools(document.get("tools"))
    except MessageError as exc:
        raise ApiError(400, str(exc), param="tools") from None
    if document.get("functions") is not None:  # the legacy form of tools
        if tools is not None:
            raise ApiError(400, "send tools or functions, not both", param="functions")
        functions = document["functions"]
        if not isinstance(functions, list):
            raise ApiError(400, "functions must be a list of function definitions", param="functions")
        try:
            tools = normalize_tools([{"type": "function", "function": f} for f in functions])
        except MessageError as exc:
            raise ApiError(400, str(exc).replace("tools[", "functions["), param="functions") from None
    for name in ("tool_choice", "function_call"):
        choice = document.get(name)
        # The template offers the tools; nothing here can force a call, forbid one or pick the function.
        if choice is not None and choice != "auto":
            raise ApiError(400, f"{name} {json.dumps(choice)[:60]} is not supported: the model decides whether to "
                           "call a tool (\"auto\"); leave it out", param=name)
    return tools


# Fields that would change the answer and that this server cannot honour, with the value that means "off".
UNSUPPORTED = {"logprobs": (False,), "top_logprobs": (0,), "logit_bias": ({},), "frequency_penalty": (0,),
               "presence_penalty": (0,), "best_of": (1,), "echo": (False,), "suffix": ("",),
               "response_format": ({"type": "text"},), "parallel_tool_calls": (True,)}


def _refuse_unsupported(document: dict) -> None:
    for name, off in UNSUPPORTED.items():
        value = document.get(name)
        if value is not None and not any(type(value) is type(o) and value == o for o in off):
            raise ApiError(400, f"{name} {json.dumps(value)[:60]} is not supported by this server; leave it out "
                           f"(or send {json.dumps(off[0])})", param=name)


def _prompt(prompt) -> str:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise ApiError(400, "prompt must be a non-empty string (one prompt per request)", param="prompt")
    return prompt


# ---- responses ----------------------------------------------------------------------------------------------

def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_object(request: Request, ident: str, text: str, finish: str, prompt_tokens: int,
                      completion_tokens: int) -> dict:
    created = int(time.time())
    if request.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
        kind = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        kind = "text_completion"
    return {"id": ident, "object": kind, "created": created, "model": request.model, "choices": [choice],
            "usage": usage(prompt_tokens, completion_tokens)}


def chunk_object(request: Request, ident: str, *, text: str | None = None, finish: str | None = None,
                 first: bool = False, usage_row: dict | None = None) -> dict:
    created = int(time.time())
    if request.kind == "chat":
        kind = "chat.completion.chunk"
        delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        kind = "text_completion"
        choices = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    chunk = {"id": ident, "object": kind, "created": created, "model": request.model, "choices": choices}
    if usage_row is not None:
        chunk["choices"] = []
        chunk["usage"] = usage_row
    return chunk


def sse(document: dict | str) -> bytes:
    data = document if isinstance(document, str) else json.dumps(document, ensure_ascii=False)
    return f"data: {data}\n\n".encode("utf-8")
