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

from runtime.serve.engine import Sampling


class ApiError(Exception):
    """An error answered as OpenAI does: `{"error": {"message", "type", "param", "code"}}` with `status`."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


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
    prompt: str = ""
    include_usage: bool = False


def parse_json(body: bytes) -> dict:
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "seed must be an integer", param="seed")
    sampling = Sampling(max_tokens=max_tokens,
                        temperature=float(_number(document, "temperature", 1.0, 0, 2)),
                        top_p=float(_number(document, "top_p", 1.0, 0, 1)) or 1.0,
                        seed=seed, stop=tuple(stop))
    stream = document.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    options = document.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    request = Request(model=model, kind=kind, stream=stream, sampling=sampling,
                      include_usage=bool(options.get("include_usage")))
    if kind == "chat":
        request.messages = _messages(document.get("messages"))
    else:
        request.prompt = _prompt(document.get("prompt"))
    return request


def _messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list of {role, content} objects", param="messages")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"messages[{index}] must be an object with a role", param="messages")
        content = message.get("content")
        if isinstance(content, list):  # the content-parts form: only text parts can be rendered by a template
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ApiError(400, f"messages[{index}].content: only text parts are supported", param="messages")
            content = "".join(part["text"] for part in content)
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{index}].content must be a string", param="messages")
        role = "system" if message["role"] == "developer" else message["role"]
        checked.append({"role": role, "content": content})
    return checked


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
