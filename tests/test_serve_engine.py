"""runtime/serve/engine.py and worker.py without the HTTP layer: an adapter's own chat template, the prefix
cache never shared across adapters, the queue limit and shutdown, and the streamed text held back at a
partial character or stop prefix. The reference is llama-cpp-python with the adapter loaded alone."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn")

from runtime.generate import prompt_tokens, render_chat  # noqa: E402
from runtime.serve.engine import _ready_length  # noqa: E402
from tests.serve_helpers import (  # noqa: E402, F401  (fleet, reference: the fixtures)
    CHATS, MAX_TOKENS, N_CTX, PROMPTS, fleet, greedy_tokens, reference)


def test_ready_length_holds_back_partial_characters_and_stop_prefixes():
    assert _ready_length("abc\ufffd", ()) == 3
    assert _ready_length("SELECT x FR", ("FROM",)) == len("SELECT x ")
    assert _ready_length("SELECT x FR", ("FROM", "R")) == len("SELECT x ")
    assert _ready_length("done", ("\n\n",)) == 4


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


def test_a_non_streamed_job_gets_its_answer_once_and_the_same_text(fleet):
    """A non-streamed job wakes the event loop once (the whole text, then Done), not once per token; its text and
    token count equal a streamed job's, whose deltas join to that text."""
    import asyncio

    from runtime.serve.engine import Delta, Done, Engine, Sampling
    from runtime.serve.worker import Job, Worker

    engine = Engine(fleet["base"], fleet["adapters"], base_name="base", n_ctx=N_CTX, threads=1, parallel=2)
    tokens = engine.text_tokens(PROMPTS[0])

    def make(engine, cancelled):
        return engine.request("a1", tokens, Sampling(max_tokens=MAX_TOKENS), cancelled)

    async def scenario():
        loop = asyncio.get_running_loop()
        worker = Worker(engine)
        jobs = [Job(make, loop, streaming=True), Job(make, loop, streaming=False)]
        for job in jobs:
            worker.submit(job)
        seen = [[event async for event in job.events()] for job in jobs]
        await loop.run_in_executor(None, worker.stop)
        return seen

    try:
        streamed, whole = asyncio.run(scenario())
    finally:
        engine.close()
    assert [type(event) for event in whole] == [Delta, Done]
    assert len(streamed) > 2 and isinstance(streamed[-1], Done)
    assert "".join(e.text for e in streamed[:-1]) == whole[0].text
    assert streamed[-1].tokens == whole[-1].tokens
