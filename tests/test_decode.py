"""runtime/decode.py and runtime/batching.py on fixture GGUFs: every mode of the decoder loop, and batched
eval requests, give the answers llama-cpp-python's own loop gives one request at a time."""

from __future__ import annotations

import pytest

from tests.ladder_helpers import _plain_answers, ggufs  # noqa: F401 (the fixture)


def test_the_decoder_loop_in_every_mode_matches_the_plain_reference(ggufs):
    """runtime.decode against llama-cpp-python's own loop (flash attention on, as llama-server runs; the prompt in
    one batch, then one token per decode): one request at a time from an empty slot gives its answers exactly;
    the prefix cache and several slots side by side give them too on F32 weights, and the prefix cache evaluates
    only what a prompt does not share."""
    import llama_cpp

    from convert import convert_model
    from runtime.decode import Decoder, Request
    from runtime.generate import prompt_tokens, render_chat
    from tests.factory import build_model
    from tests.serve_helpers import greedy_tokens

    path = convert_model(build_model("llama"), ggufs["ft"].parent / "ft-f32.gguf", outtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, flash_attn=True, verbose=False)
    shots = [{"role": "user", "content": "Count the customers in Oslo"}, {"role": "assistant", "content": "SELECT 1"}]
    prompts = [[{"role": "system", "content": "Terse."}, *shots, {"role": "user", "content": q}]
               for q in ggufs["questions"]]
    tokens = [prompt_tokens(llm, render_chat(llm, p)) for p in prompts]
    expected = [greedy_tokens(llm, t, 8) for t in tokens]
    decoder = Decoder(llm, n_ctx=512, threads=1)
    requests = [Request(t, max_tokens=8) for t in tokens]
    assert [s.generated for s in decoder.run(requests, plain=True)] == expected
    before = decoder.counts["prompt_evaluated"]
    assert [s.generated for s in decoder.run(requests)] == expected  # prefix reused each time
    assert decoder.counts["prompt_evaluated"] - before < sum(len(t) for t in tokens)
    decoder.close()
    decoder = Decoder(llm, n_seq=3, n_ctx=512, threads=1)
    first = [s.generated for s in decoder.run(requests[:3])]
    again = [s.generated for s in decoder.run(requests[:3])]  # every prompt now cached
    assert first == again == expected[:3] and any(first)
    decoder.close()
    llm.close()


@pytest.mark.parametrize("exact, past", [(None, False), (None, True), (False, False)],
                         ids=["probe", "past-lone-cells", "not-exact"])
def test_batched_eval_answers_are_the_lone_answers(ggufs, monkeypatch, exact, past):
    """runtime.batching: several requests at once, each answer the one the request gets alone; also when requests
    pass LONE_CELLS mid-answer (they go on alone) and when the probe says rows are not batch-exact (all alone)."""
    from runtime import batching
    from runtime.decode import Decoder, Request
    from runtime.generate import prompt_tokens, render_chat
    from runtime.load import open_gguf

    if exact is not None:
        monkeypatch.setattr(batching, "rows_are_batch_exact", lambda decoder: exact)
    prompts = [[{"role": "user", "content": q}] for q in ggufs["questions"]]
    expected = _plain_answers(ggufs["base"], prompts, max_tokens=12)
    llm = open_gguf(ggufs["base"], n_ctx=64, threads=1)
    decoder = Decoder(llm, n_seq=3, n_ctx=256, threads=1)
    step = batching.BatchExact(decoder)
    requests = [Request(prompt_tokens(llm, render_chat(llm, p)), max_tokens=12) for p in prompts]
    if past:  # every request goes on alone a few tokens into its answer
        monkeypatch.setattr(batching, "LONE_CELLS", max(len(r.tokens) for r in requests) + 3)
    got = [decoder.detokenize(s.generated) for s in decoder.run(requests, fresh=True, step_fn=step)]
    assert got == expected
    assert (step.tokens_batched > 0) == (exact is not False and step.batched)
    decoder.close()
    llm.close()


def test_adapter_groups_take_adjacent_slots(monkeypatch):
    """llama.cpp puts only consecutive sequence ids in one ubatch: requests that alternate between two adapters
    must still land in two runs of adjacent slots (one pass over the weights per group and step), and a group's
    next request joins its run rather than taking the slot of another adapter's cached prefix."""
    import llama_cpp

    from runtime.decode import Decoder, Request

    monkeypatch.setattr(llama_cpp, "llama_memory_seq_rm", lambda *args: True)
    decoder = Decoder.__new__(Decoder)
    decoder.n_seq, decoder.n_ctx, decoder.can_cut, decoder.memory = 6, 64, True, None
    decoder.adapters = {"a": object(), "b": object()}
    decoder.free, decoder.cached = list(range(6)), [(None, []) for _ in range(6)]
    decoder.counts = {"prompt_evaluated": 0}
    placed = [decoder.admit(Request([1, 2, 3], max_tokens=4, adapter=name)) for name in "abab"]
    slots = {name: sorted(s.slot for s in placed if s.request.adapter == name) for name in "ab"}
    assert all(high - low == len(run) - 1 for run in slots.values() for low, high in [(run[0], run[-1])]), slots
    decoder.release(placed[0])  # a's slot frees with its prompt cached; the next b request must not take it
    fresh = decoder.admit(Request([1, 2, 3], max_tokens=4, adapter="b"))
    assert any(abs(fresh.slot - s) == 1 for s in slots["b"]), (fresh.slot, slots)


def test_decode_rows_follow_the_callers_order(ggufs):
    """Decoder.decode lays the batch out by slot; the rows it returns still belong to the entries as given."""
    import llama_cpp
    import numpy as np

    from convert import convert_model
    from runtime.decode import Decoder
    from tests.factory import build_model

    path = convert_model(build_model("llama"), ggufs["ft"].parent / "ft-f32-rows.gguf", outtype="f32")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, flash_attn=True, verbose=False)
    prompts = {0: [1, 5, 9], 1: [1, 7], 2: [1, 4, 6, 8]}
    decoder = Decoder(llm, n_seq=3, n_ctx=64, threads=1)
    alone = {}
    for slot, prompt in prompts.items():
        decoder.clear()
        rows = decoder.decode([(t, slot, i, i == len(prompt) - 1) for i, t in enumerate(prompt)])
        alone[slot] = np.array(decoder.logits(rows[0]))
    decoder.clear()
    entries = [(t, slot, i, i == len(prompts[slot]) - 1) for slot in (2, 0, 1) for i, t in enumerate(prompts[slot])]
    rows = decoder.decode(entries)
    for slot, row in zip((2, 0, 1), rows):
        assert np.allclose(np.array(decoder.logits(row)), alone[slot], atol=1e-4), slot
    decoder.close()
    llm.close()
