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
llama_cpp = pytest.importorskip("llama_cpp")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from runtime.generate import detokenize, prompt_tokens, render_chat  # noqa: E402
from runtime.serve.engine import _ready_length  # noqa: E402
from tests.serve_helpers import ServerProcess, build_fleet, greedy_tokens, raw_request  # noqa: E402

KEY = "test-key-123"
N_CTX = 512
PARALLEL = 4
MAX_TOKENS = 24
SERVER_FLAGS = ["--ctx", str(N_CTX * PARALLEL), "--parallel", str(PARALLEL), "--threads", "1", "--api-key", KEY, "--max-tokens", "400",
                "--max-body", "4096"]
CHATS = [
    [{"role": "user", "content": "List the users who joined in 2024."}],
    [{"role": "system", "content": "You write SQL."}, {"role": "user", "content": "Count the orders per day."}],
    [{"role": "user", "content": "Hello there, how are you today?"}],
]
PROMPTS = ["SELECT name FROM users WHERE", "The weather in Paris is", "def add(a, b):"]


@pytest.fixture(scope="module")
def fleet():
    return build_fleet(2, outtype="f32")


@pytest.fixture(scope="module")
def server(fleet):
    process = ServerProcess(fleet["base"], fleet["adapters"], extra=SERVER_FLAGS)
    yield process
    assert process.stop() == 0, "".join(process.stderr)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


class Reference:
    """llama-cpp-python, one Llama per adapter (lora_path), greedy, fresh cache per prompt; results cached."""

    def __init__(self, fleet):
        self.paths = {"base": None, **fleet["adapters"]}
        self.base = fleet["base"]
        self.models = {}
        self.results = {}
        self.lock = threading.Lock()

    def _llm(self, name):
        if name not in self.models:
            kwargs = {"lora_path": str(self.paths[name])} if self.paths[name] else {}
            # flash attention as llama-server (and so edgeft's decoder) chooses it on a CPU
            self.models[name] = llama_cpp.Llama(model_path=str(self.base), n_ctx=N_CTX, n_threads=1, verbose=False,
                                                flash_attn=True, **kwargs)
        return self.models[name]

    def answer(self, name, *, messages=None, prompt=None, max_tokens=MAX_TOKENS):
        key = (name, json.dumps(messages), prompt, max_tokens)
        with self.lock:
            if key not in self.results:
                llm = self._llm(name)
                if messages is not None:
                    tokens = prompt_tokens(llm, render_chat(llm, messages))
                else:  # what create_completion feeds the model for a text prompt
                    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
                generated = greedy_tokens(llm, tokens, max_tokens)
                self.results[key] = (detokenize(llm, generated), len(generated))
            return self.results[key]

    def close(self):
        for llm in self.models.values():
            llm.close()


@pytest.fixture(scope="module")
def reference(fleet):
    ref = Reference(fleet)
    yield ref
    ref.close()


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


def test_ready_length_holds_back_partial_characters_and_stop_prefixes():
    assert _ready_length("abc\ufffd", ()) == 3
    assert _ready_length("SELECT x FR", ("FROM",)) == len("SELECT x ")
    assert _ready_length("SELECT x FR", ("FROM", "R")) == len("SELECT x ")
    assert _ready_length("done", ("\n\n",)) == 4


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


def test_eval_scores_several_adapters_over_one_base_load(fleet, reference, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    golds = [reference.answer(model, messages=CHATS[i])[0] for i, model in enumerate(("a1", "a2", "base"))]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps({"messages": chat + [{"role": "assistant", "content": gold}]}) + "\n"
                            for chat, gold in zip(CHATS, golds)))
    adapters = [f"--adapter={name}={path}" for name, path in fleet["adapters"].items()]
    result = CliRunner().invoke(main, ["eval", str(fleet["base"]), *adapters, "--data", str(data), "-o",
                                       str(tmp_path / "out"), "--max-tokens", str(MAX_TOKENS), "--ctx", str(N_CTX),
                                       "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    for index, row in enumerate(rows):
        for model in ("base", "a1", "a2"):
            # the same answers as each adapter loaded alone with lora_path
            assert row[model]["answer"] == reference.answer(model, messages=CHATS[index])[0], (index, model)
    assert [rows[i][model]["score"] for i, model in enumerate(("a1", "a2", "base"))] == [1.0, 1.0, 1.0]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    means = {row["model"]: row["score"]["mean"] for row in report["models"]}
    assert means == {model: sum(rows[i][model]["score"] for i in range(3)) / 3 for model in ("base", "a1", "a2")}
    assert means["a1"] < 1.0  # each adapter got only its own example right: the answers really differ
    assert "a1: exact" in result.output


def test_eval_with_adapters_refuses_single_model_options(fleet, tmp_path):
    from click.testing import CliRunner

    from edgeft.cli import main

    data = tmp_path / "eval.jsonl"
    data.write_text(json.dumps({"messages": CHATS[0] + [{"role": "assistant", "content": "x"}]}) + "\n")
    result = CliRunner().invoke(main, ["eval", str(fleet["base"]), f"--adapter=a1={fleet['adapters']['a1']}",
                                       "--data", str(data), "-o", str(tmp_path / "out"), "--baseline",
                                       str(fleet["base"])])
    assert result.exit_code == 1 and "--baseline: not with --adapter" in result.output
    assert not (tmp_path / "out").exists()


def test_an_adapter_that_carries_its_template_is_rendered_with_it(fleet, tmp_path):
    import warnings

    from convert.lora import convert_lora
    from runtime.serve.engine import Engine, Sampling
    from tests.factory import build_model
    from tests.test_merge import make_adapter

    base_dir = build_model("qwen2")
    adapter, _, _ = make_adapter(base_dir, tmp_path / "peft", seed=7, r=8, lora_alpha=64)
    trained = "{% for m in messages %}<|im_start|>{{ m['role'] }}: {{ m['content'] }}<|im_end|>{% endfor %}" \
              "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}"
    (adapter / "chat_template.jinja").write_text(trained)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convert-lora warns that the template is not the base's: that is the case
        adapter_gguf = convert_lora(adapter, tmp_path / "t.gguf", base_dir=base_dir)
    engine = Engine(fleet["base"], {"t": adapter_gguf, "a1": fleet["adapters"]["a1"]}, base_name="base",
                    n_ctx=N_CTX, threads=1)
    try:
        messages = CHATS[0]
        expected = prompt_tokens(engine.llm, render_chat(engine.llm, messages, template=trained))
        assert engine.chat_tokens("t", messages) == expected
        assert engine.chat_tokens("a1", messages) == engine.chat_tokens("base", messages) != expected
        lone = llama_cpp.Llama(model_path=str(fleet["base"]), lora_path=str(adapter_gguf), n_ctx=N_CTX, n_threads=1,
                               verbose=False, flash_attn=True)
        try:
            generated = greedy_tokens(lone, expected, MAX_TOKENS)
        finally:
            lone.close()
        done = list(engine.generate("t", expected, Sampling(max_tokens=MAX_TOKENS)))[-1]
        assert done.tokens == generated
    finally:
        engine.close()


def test_a_prefix_cached_under_one_adapter_is_never_served_to_another(fleet, reference):
    """One slot: the same prompt under a1, then a2, then a1. The slot's cells from a1 must not be reused for a2
    (their keys and values went through a1's deltas: the answer would be wrong), and are reused for a1 again."""
    from runtime.serve.engine import Engine, Sampling

    engine = Engine(fleet["base"], fleet["adapters"], base_name="base", n_ctx=N_CTX, threads=1, parallel=1)
    try:
        tokens = engine.chat_tokens("a1", CHATS[0])
        evaluated = []
        for model in ("a1", "a2", "a1", "base"):
            before = engine.decoder.counts["prompt_evaluated"]
            done = list(engine.generate(model, tokens, Sampling(max_tokens=MAX_TOKENS)))[-1]
            evaluated.append(engine.decoder.counts["prompt_evaluated"] - before)
            assert (engine.decoder.detokenize(done.tokens), len(done.tokens)) == \
                reference.answer(model, messages=CHATS[0]), model
        assert evaluated == [len(tokens), len(tokens), len(tokens), len(tokens)]  # a switch reuses nothing
        again = engine.decoder.counts["prompt_evaluated"]
        list(engine.generate("base", tokens, Sampling(max_tokens=MAX_TOKENS)))
        assert engine.decoder.counts["prompt_evaluated"] - again == 1  # same adapter: all but the last token reused
    finally:
        engine.close()


def test_worker_refuses_past_the_queue_and_answers_waiting_ones_at_shutdown(fleet):
    import asyncio

    from runtime.serve.engine import Engine, Sampling
    from runtime.serve.worker import Busy, Failed, Job, Worker

    engine = Engine(fleet["base"], fleet["adapters"], base_name="base", n_ctx=N_CTX, threads=1, parallel=1)
    tokens = engine.text_tokens(PROMPTS[0])

    def make(max_tokens):
        return lambda engine, cancelled: engine.request("a1", tokens, Sampling(max_tokens=max_tokens), cancelled)

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = Worker(engine, max_queue=2)
        running = Job(make(400), loop)
        worker.submit(running)
        first = running.events()
        await first.__anext__()  # it decodes: the one slot is taken, the next two wait in the queue
        waiting = [Job(make(4), loop), Job(make(4), loop)]
        for job in waiting:
            worker.submit(job)
        with pytest.raises(Busy, match="2 requests are already waiting"):
            worker.submit(Job(make(4), loop))
        stopping = loop.run_in_executor(None, worker.stop)
        for job in waiting:  # at shutdown a job still waiting gets an error, it is not dropped silently
            events = [event async for event in job.events()]
            assert len(events) == 1 and isinstance(events[0], Failed) and events[0].status == 503
        running.cancel()
        await stopping
        assert worker.counts["cancelled"] == 1
        with pytest.raises(Busy, match="shutting down"):
            worker.submit(Job(make(4), loop))

    try:
        asyncio.run(scenario())
    finally:
        engine.close()


@pytest.mark.parametrize("rank, limit", [(1, 8), (8, 8), (9, 16), (16, 16), (33, 64), (200, 256), (300, 320),
                                         (512, 512), (513, None)])
def test_the_card_names_the_smallest_max_lora_rank_vllm_accepts(rank, limit):
    from edgeft.release.card import render_model_card, vllm_command, vllm_max_lora_rank

    assert vllm_max_lora_rank(rank) == limit
    manifest = {"name": "sql", "quant": "Q4_K_M", "metrics": {}, "adapter": {"path": "adapter", "rank": rank},
                "base_model": {"name": "smollm2", "provenance": {"upstream": "HuggingFaceTB/SmolLM2-135M-Instruct"}}}
    card = render_model_card(manifest, gguf_name="sql.gguf")
    expected = vllm_command("HuggingFaceTB/SmolLM2-135M-Instruct", "sql", "adapter", rank)
    if limit is None:
        assert expected is None and "above the largest --max-lora-rank" in card
    else:
        assert expected == ("vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora --lora-modules "
                            f"sql=adapter --max-lora-rank {limit}") and expected in card
