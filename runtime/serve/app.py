"""The HTTP side of `edgeft serve`: a Starlette app speaking OpenAI's /v1 API over one Worker.

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both with "stream": true as
server-sent events). Every answer that is not a success is a JSON `{"error": {...}}` with a fitting status, and
the server goes on serving after it.

Order of checks on a request: the bearer key (401, before anything of the body is read), the body's size (413,
from Content-Length, and counted while reading for chunked bodies), JSON (400), fields (400), the model (404).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from runtime.serve.engine import Delta, Done
from runtime.serve.protocol import (ApiError, Limits, Request, check_api_key, chunk_object, completion_object,
                                    new_id, parse_json, parse_request, sse, usage)
from runtime.serve.worker import Busy, Failed, Job, Worker


def error_response(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class BearerAuth:
    """ASGI middleware: with a key set, every HTTP request must carry `Authorization: Bearer KEY` (compared in
    constant time), or it gets 401 without its body being read."""

    def __init__(self, app, api_key: str | None):
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.api_key is not None:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            scheme, _, token = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                                     self.api_key.encode()):
                message = "a valid API key is required: send Authorization: Bearer KEY"
                if given:
                    message = "the API key is not valid"
                response = error_response(ApiError(401, message, kind="authentication_error",
                                                   code="invalid_api_key"))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def read_body(request: HttpRequest, limit: int) -> bytes:
    too_large = ApiError(413, f"the request body is larger than the server's limit of {limit} bytes",
                         code="request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _generation(request: Request):
    """What the worker decodes: tokenized with the model's template, under the request's adapter."""
    def make(engine, cancelled):
        if request.kind == "chat":
            tokens = engine.chat_tokens(request.model, request.messages, request.tools)
        else:
            tokens = engine.text_tokens(request.prompt)
        return engine.request(request.model, tokens, request.sampling, cancelled)
    return make


async def _watch_disconnect(http: HttpRequest, job: Job) -> None:
    """The body is read, so the next ASGI message is the client leaving (or the response being done)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            job.cancel()
            return


NO_ANSWER = "the request ended without an answer"


class Api:
    """The routes over one engine. The worker exists while the app runs (made and stopped by `lifespan`)."""

    def __init__(self, engine, limits: Limits):
        self.engine, self.limits = engine, limits
        self.worker: Worker | None = None
        self.started = time.time()

    async def health(self, http: HttpRequest):
        worker = self.worker
        return JSONResponse({"status": "ok", "models": self.engine.names, "waiting": worker.waiting if worker else 0,
                             "requests": dict(worker.counts) if worker else {}})

    async def models(self, http: HttpRequest):
        rows = [{"id": row["id"], "object": "model", "created": int(self.started), "owned_by": "edgeft",
                 **{k: v for k, v in row.items() if k != "id"}} for row in self.engine.describe()]
        return JSONResponse({"object": "list", "data": rows})

    async def chat(self, http: HttpRequest):
        return await self.completions(http, "chat")

    async def text(self, http: HttpRequest):
        return await self.completions(http, "completion")

    async def completions(self, http: HttpRequest, kind: str):
        try:
            request, job = await self._submit(http, kind)
        except ApiError as error:
            return error_response(error)
        except Busy as busy:
            return error_response(ApiError(503, str(busy), kind="server_error", code="busy"))
        watcher = asyncio.create_task(_watch_disconnect(http, job))
        events = job.events()
        first = await _first_event(events, job, watcher)
        if isinstance(first, Failed):
            watcher.cancel()
            return error_response(ApiError(first.status, first.message,
                                           kind="server_error" if first.status >= 500 else "invalid_request_error"))
        ident = new_id(kind)
        if request.stream:
            return StreamingResponse(_stream(request, ident, _from(first, events), job, watcher),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        return await _answer(request, ident, _from(first, events), job, watcher)

    async def _submit(self, http: HttpRequest, kind: str) -> tuple[Request, Job]:
        body = await read_body(http, self.limits.max_body_bytes)
        request = parse_request(parse_json(body), kind, self.engine.names, self.limits)
        job = Job(_generation(request), asyncio.get_running_loop(), streaming=request.stream)
        self.worker.submit(job)
        return request, job

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.worker = Worker(self.engine, max_queue=self.limits.max_queue)
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.worker.stop)


async def on_http_error(http: HttpRequest, exc: HTTPException):
    message = {404: f"no route {http.url.path}; try /v1/models, /v1/chat/completions, /v1/completions, "
                    "/health", 405: f"{http.method} is not allowed on {http.url.path}"}
    return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))


def build_app(engine, *, api_key: str | None = None, limits: Limits | None = None) -> Starlette:
    check_api_key(api_key)  # here, not in the middleware: Starlette builds that on the first request
    api = Api(engine, limits or Limits())
    app = Starlette(routes=[Route("/health", api.health), Route("/v1/models", api.models),
                            Route("/v1/chat/completions", api.chat, methods=["POST"]),
                            Route("/v1/completions", api.text, methods=["POST"])],
                    exception_handlers={HTTPException: on_http_error}, lifespan=api.lifespan)
    app.add_middleware(BearerAuth, api_key=api_key)
    return app


async def _first_event(events, job: Job, watcher: asyncio.Task):
    """The job's first event, or a Failed when it ends without one. Waiting here is what a client's leaving
    cancels, so the job and the watcher are cancelled with it."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return Failed(500, NO_ANSWER)
    except BaseException:
        job.cancel()
        watcher.cancel()
        raise


async def _from(first, events):
    """The first event (already taken to choose the response) and then the rest."""
    yield first
    async for event in events:
        yield event


async def _answer(request: Request, ident: str, events, job: Job, watcher: asyncio.Task) -> JSONResponse:
    """Not streamed: the whole text in one completion object, or the error the job failed with."""
    parts, done = [], None
    try:
        async for event in events:
            if isinstance(event, Delta):
                parts.append(event.text)
            elif isinstance(event, Done):
                done = event
            elif isinstance(event, Failed):
                return error_response(ApiError(event.status, event.message, kind="server_error"))
    finally:
        job.cancel()  # no-op when finished; frees the slot when this handler was cancelled
        watcher.cancel()
    if done is None:
        return error_response(ApiError(500, NO_ANSWER, kind="server_error"))
    return JSONResponse(completion_object(request, ident, "".join(parts), done.finish_reason,
                                          done.prompt_tokens, done.completion_tokens))


async def _stream(request: Request, ident: str, events, job: Job, watcher: asyncio.Task):
    """SSE: a role chunk (chat), text chunks, a finish chunk, a usage chunk when asked, then [DONE]. A client
    that leaves cancels this generator (or the watcher sees it); either way the job stops at the next token."""
    try:
        if request.kind == "chat":
            yield sse(chunk_object(request, ident, first=True))
        async for event in events:
            if isinstance(event, Delta) and event.text:
                yield sse(chunk_object(request, ident, text=event.text))
            elif isinstance(event, Done):
                yield sse(chunk_object(request, ident, finish=event.finish_reason))
                if request.include_usage:
                    yield sse(chunk_object(request, ident,
                                           usage_row=usage(event.prompt_tokens, event.completion_tokens)))
            elif isinstance(event, Failed):
                # The 200 is already sent: the error travels as an event, as OpenAI's API does mid-stream.
                yield sse(ApiError(event.status, event.message, kind="server_error").body())
        yield sse("[DONE]")
    finally:
        job.cancel()
        watcher.cancel()
