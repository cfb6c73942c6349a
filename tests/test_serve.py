"""edgeft serve: one base + two LoRA adapters behind an OpenAI-compatible API, tested with the official client.

The reference for every answer is llama-cpp-python with the adapter loaded the one-at-a-time way
(`Llama(lora_path=...)`), a fresh KV cache per prompt, decoding greedily through its own `Llama.generate`. The
server (4 slots, continuous batching) must give the same tokens (count and text) for the base and each adapter, in
any order of requests, with 8 clients at once on alternating adapters, streaming or not. The fixture's weights are
F32, where the batch a token is decoded in changes no argmax.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from tests.serve_helpers import (  # noqa: E402, F401  (fleet, reference: the fixtures)
    CHATS, MAX_TOKENS, N_CTX, PROMPTS, ServerProcess, fleet, raw_request, reference)

KEY = "test-key-123"
PARALLEL = 4
SERVER_FLAGS = ["--ctx", str(N_CTX * PARALLEL), "--parallel", str(PARALLEL), "--threads", "1", "--api-key", KEY, "--max-tokens", "400",
                "--max-body", "4096"]


@pytest.fixture(scope="module")
def server(fleet):
    process = ServerProcess(fleet["base"], fleet["adapters"], extra=SERVER_FLAGS)
    yield process
    assert process.stop() == 0, "".join(process.stderr)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(client, model, *, messages=None, prompt=None, stream=False, max_tokens=MAX_TOKENS, **extra):
    """(text, completion_tokens, finish_reason) from the server through the openai client."""
    common = dict(model=model, max_tokens=max_tokens, temperature=0, stream=stream, **extra)
    if stream:
        common["stream_options"] = {"include_usage": True}
    if messages is not None:
        response = client.chat.completions.create(messages=messages, **common)
    else:
        response = client.completions.create(prompt=prompt, **common)
    if not stream:
        choice = response.choices[0]
        text = choice.message.content if messages is not None else choice.text
        return text, response.usage.completion_tokens, choice.finish_reason
    parts, used, finish = [], None, None
    for chunk in response:
        if chunk.usage is not None:
            used = chunk.usage.completion_tokens
        for choice in chunk.choices:
            piece = choice.delta.content if messages is not None else choice.text
            parts.append(piece or "")
            finish = choice.finish_reason or finish
    return "".join(parts), used, finish


def test_models_lists_base_and_adapters_with_metadata(client, fleet):
    models = {model.id: model for model in client.models.list().data}
    assert sorted(models) == ["a1", "a2", "base"]
    extra = models["a1"].model_extra
    assert extra["kind"] == "lora" and extra["base"] == "base"
    assert extra["metadata"]["general.type"] == "adapter" and extra["metadata"]["general.name"] == "peft-a1"
    assert extra["file_size"] == fleet["adapters"]["a1"].stat().st_size
    assert models["base"].model_extra["metadata"]["general.architecture"] == "qwen2"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_greedy_equals_lora_path_for_base_and_adapters(client, reference, stream):
    texts = {}
    for model in ("base", "a1", "a2"):
        for messages in CHATS[:2]:
            expected = reference.answer(model, messages=messages)
            text, used, _ = ask(client, model, messages=messages, stream=stream)
            assert (text, used) == expected, (model, messages)
            texts[model, "chat", json.dumps(messages)] = text
        for prompt in PROMPTS[:2]:
            expected = reference.answer(model, prompt=prompt)
            text, used, finish = ask(client, model, prompt=prompt, stream=stream)
            assert (text, used) == expected, (model, prompt)
            assert finish == ("length" if used == MAX_TOKENS else "stop")
            texts[model, "text", prompt] = text
    # the adapters must move decoding, or the comparisons above would not tell them apart
    for kind, what in {(kind, what) for _, kind, what in texts}:
        assert len({texts[model, kind, what] for model in ("base", "a1", "a2")}) == 3


def test_alternating_adapters_do_not_share_a_cache(client, reference):
    # the same prompt under a1, a2, a1 ...: a KV prefix kept across the switch would change the answers
    messages = CHATS[0]
    order = ["a1", "a2", "a1", "base", "a2", "a2", "a1", "base", "base", "a1"]
    for index, model in enumerate(order):
        text, used, _ = ask(client, model, messages=messages, stream=index % 2 == 1)
        assert (text, used) == reference.answer(model, messages=messages), (index, model)
    for model in ("a2", "a1", "a2"):
        assert ask(client, model, prompt=PROMPTS[2])[:2] == reference.answer(model, prompt=PROMPTS[2])


def test_eight_clients_at_once(server, reference):
    jobs = [(model, kind, index, index % 2 == 0) for index, (model, kind) in
            enumerate([(m, k) for m in ("a1", "a2", "base", "a2") for k in ("chat", "text")])]
    expected = {}
    for model, kind, index, _ in jobs:
        what = {"messages": CHATS[index % 3]} if kind == "chat" else {"prompt": PROMPTS[index % 3]}
        expected[index] = (what, reference.answer(model, **what))

    barrier = threading.Barrier(len(jobs))

    def one(job):
        model, kind, index, stream = job
        own = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)
        barrier.wait(timeout=60)
        return ask(own, model, stream=stream, **expected[index][0])[:2]

    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(one, jobs))
    for job, got in zip(jobs, results):
        assert got == expected[job[2]][1], job


def test_stop_strings_cut_streaming_and_not_alike(client, reference):
    full, _ = reference.answer("a1", prompt=PROMPTS[0], max_tokens=40)
    clean = [i for i in range(4, len(full) - 3) if "\ufffd" not in full[i:i + 3] and full[i:i + 3].strip()]
    assert clean, full
    stop = full[clean[0]:clean[0] + 3]
    cut = full[:full.index(stop)]
    for stream in (False, True):
        text, _, finish = ask(client, "a1", prompt=PROMPTS[0], max_tokens=40, stop=[stop], stream=stream)
        assert (text, finish) == (cut, "stop")


def _post(server, path, body, *, key=KEY, **headers):
    headers = {"Content-Type": "application/json", **headers}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return raw_request(server.url, path, body=body, headers=headers, method="POST")


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, client, reference):
    good = json.dumps({"model": "a2", "prompt": PROMPTS[1], "max_tokens": MAX_TOKENS, "temperature": 0}).encode()
    cases = [
        ("no key", lambda: _post(server, "/v1/completions", good, key=None), 401, "API key"),
        ("wrong key", lambda: _post(server, "/v1/completions", good, key="nope"), 401, "not valid"),
        ("no key on models", lambda: raw_request(server.url, "/v1/models"), 401, "API key"),
        ("no key on health", lambda: raw_request(server.url, "/health"), 401, "API key"),
        ("malformed JSON", lambda: _post(server, "/v1/completions", b'{"model": "a1", "prompt": '), 400, "JSON"),
        ("not an object", lambda: _post(server, "/v1/chat/completions", b"[1, 2]"), 400, "JSON object"),
        ("unknown model", lambda: _post(server, "/v1/chat/completions", json.dumps(
            {"model": "gpt-4", "messages": CHATS[0]}).encode()), 404, "known models: base, a1, a2"),
        ("max_tokens over the limit", lambda: _post(server, "/v1/completions", json.dumps(
            {"model": "a1", "prompt": "x", "max_tokens": 401}).encode()), 400, "max_tokens"),
        ("body over the limit", lambda: _post(server, "/v1/completions", json.dumps(
            {"model": "a1", "prompt": "x" * 5000}).encode()), 413, "4096 bytes"),
        ("no messages", lambda: _post(server, "/v1/chat/completions", json.dumps(
            {"model": "a1", "messages": []}).encode()), 400, "messages"),
        ("prompt over the context", lambda: _post(server, "/v1/completions", json.dumps(
            {"model": "a1", "prompt": "users " * 600}).encode()), 400, "context"),
        ("unknown route", lambda: raw_request(server.url, "/v2/nothing",
                                              headers={"Authorization": f"Bearer {KEY}"}), 404, "no route"),
    ]
    for what, call, status, words in cases:
        got_status, body = call()
        assert got_status == status, (what, body)
        assert words in body["error"]["message"], (what, body)
        # and the server still answers, exactly
        text, used, _ = ask(client, "a2", prompt=PROMPTS[1])
        assert (text, used) == reference.answer("a2", prompt=PROMPTS[1]), what


def test_openai_client_sees_the_errors(server):
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0, timeout=60)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    right = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.NotFoundError, match="known models"):
        right.completions.create(model="nope", prompt="x")
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        right.completions.create(model="a1", prompt="x", max_tokens=10_000)


def test_client_leaving_mid_stream_frees_the_slot(server, client, reference):
    import http.client

    before = raw_request(server.url, "/health", headers={"Authorization": f"Bearer {KEY}"})[1]["requests"]
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": "a1", "prompt": PROMPTS[0], "max_tokens": 400, "temperature": 0, "stream": True})
    connection.request("POST", "/v1/completions", body=body,
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    assert response.read(6) == b"data: "
    connection.sock.close()  # leave mid-stream
    connection.close()
    # the next request (another adapter) is served, and the abandoned one was counted as cancelled
    assert ask(client, "a2", prompt=PROMPTS[1])[:2] == reference.answer("a2", prompt=PROMPTS[1])
    deadline = time.monotonic() + 30
    while True:
        after = raw_request(server.url, "/health", headers={"Authorization": f"Bearer {KEY}"})[1]
        if after["requests"]["cancelled"] > before["cancelled"] or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert after["requests"]["cancelled"] == before["cancelled"] + 1, after
    assert after["waiting"] == 0


def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(fleet, reference):
    process = ServerProcess(fleet["base"], fleet["adapters"], extra=["--ctx", str(N_CTX), "--parallel", "1",
                                                                     "--threads", "1"])
    try:
        client = openai.OpenAI(base_url=process.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        ask(client, "a1", prompt=PROMPTS[0])  # warm: the in-flight requests below start decoding at once
        results, errors = {}, {}
        started = threading.Event()

        def streaming():
            try:
                stream = client.completions.create(model="a1", prompt=PROMPTS[0], max_tokens=300, temperature=0,
                                                   stream=True)
                parts = []
                for chunk in stream:
                    started.set()
                    parts.extend(choice.text for choice in chunk.choices)
                results["stream"] = "".join(parts)
            except Exception as exc:  # an error is an allowed outcome; a hang or a cut stream is not
                errors["stream"] = exc

        def waiting():
            try:
                results["queued"] = ask(client, "a2", prompt=PROMPTS[1])[:2]
            except Exception as exc:
                errors["queued"] = exc

        threads = [threading.Thread(target=streaming), threading.Thread(target=waiting)]
        threads[0].start()
        assert started.wait(60)
        threads[1].start()
        time.sleep(0.2)
        process.terminate()
        for thread in threads:
            thread.join(120)
            assert not thread.is_alive()
        assert process.process.wait(60) == 0, "".join(process.stderr)
        expected_stream = reference.answer("a1", prompt=PROMPTS[0], max_tokens=300)[0]
        assert results.get("stream") == expected_stream or "stream" in errors
        assert results.get("queued") == reference.answer("a2", prompt=PROMPTS[1]) or "queued" in errors
        assert results, errors  # at least the request already streaming finished
    finally:
        process.stop()


def test_sigterm_exit_status_when_idle(fleet):
    process = ServerProcess(fleet["base"], {}, extra=["--ctx", "64", "--parallel", "1"])
    process.process.send_signal(signal.SIGTERM)
    assert process.process.wait(60) == 0, "".join(process.stderr)
