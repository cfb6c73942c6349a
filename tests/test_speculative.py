"""The draft-checking step (runtime.speculative) of runtime.decode's loop: drafts copied from text the decoder holds,
checked in one batched step, give the answer the plain loop gives (F32 weights), whether the draft is right, partly
right or wrong."""

from __future__ import annotations

import pytest

from runtime.speculative import accepted_prefix, propose


def test_an_agreeing_answer_is_drafted_from_where_generation_stands():
    assert propose([5, 6], [1, 2, 5, 6], [[5, 6, 7, 8, 9]], limit=2) == [7, 8]
    assert propose([], [1, 2], [[5, 6, 7]], limit=8) == [5, 6, 7]  # nothing generated: the whole answer


def test_prompt_lookup_continues_the_latest_earlier_occurrence_of_the_tail():
    context = [1, 2, 3, 4, 9, 1, 2, 3, 7, 8, 1, 2, 3]
    assert propose([], context, [], limit=3) == [7, 8, 1]  # the latest earlier "1 2 3", not the tail itself
    assert propose([], [4, 5, 6, 4, 5], [], limit=4) == [6, 4, 5]  # two-token tail
    assert propose([], [1, 2, 3], [], limit=4) == []  # nothing matches
    assert propose([3], [8, 9, 3], [[1, 9, 3, 4, 4]], limit=4) == [4, 4]  # another answer holds "9 3"
    assert propose([1], [1], [[1, 2]], limit=0) == []


def test_accepted_prefix_stops_at_the_first_disagreement():
    assert accepted_prefix([4, 5, 6], [4, 5, 6, 7]) == 3
    assert accepted_prefix([4, 5, 6], [4, 9, 6, 7]) == 1
    assert accepted_prefix([4, 5, 6], [0, 5, 6, 7]) == 0
    assert accepted_prefix([], [3]) == 0


@pytest.fixture(scope="module")
def fixture_model(tmp_path_factory):
    """The factory's llama at F32: greedy is then exact in every batch shape."""
    from convert import convert_model
    from runtime.load import open_gguf
    from tests.factory import build_model

    path = convert_model(build_model("llama"), tmp_path_factory.mktemp("spec") / "f32.gguf", outtype="f32")
    llm = open_gguf(path, n_ctx=512, threads=1)
    yield llm
    llm.close()


QUESTIONS = ["Count the customers in Oslo", "How many buyers are there in Rome?", "List every client from Paris",
             "What is the total spent by shoppers living in Lyon"]


def _prompts(llm) -> list[list[int]]:
    from runtime.generate import prompt_tokens, render_chat

    shots = [{"role": "user", "content": "Count the customers in Riga"}, {"role": "assistant", "content": "SELECT 1"}]
    return [prompt_tokens(llm, render_chat(llm, [{"role": "system", "content": "Terse."}, *shots,
                                                 {"role": "user", "content": q}])) for q in QUESTIONS]


def _plain(llm, prompts):
    from runtime.decode import Decoder, Request

    decoder = Decoder(llm, n_ctx=512, threads=1)
    try:
        return [(s.generated, s.stopped) for s in decoder.run([Request(t, max_tokens=12) for t in prompts],
                                                              plain=True)]
    finally:
        decoder.close()


def test_speculative_answers_are_greedy_answers_with_right_partly_right_and_wrong_drafts(fixture_model):
    from runtime.decode import Decoder, Request
    from runtime.speculative import draft_step

    llm = fixture_model
    prompts = _prompts(llm)
    expected = _plain(llm, prompts)
    assert any(len(tokens) >= 4 for tokens, _ in expected)
    eog = llm.token_eos()
    decoder = Decoder(llm, n_seq=3, n_ctx=512, threads=1)
    for prompt, (tokens, stopped) in zip(prompts, expected):
        right = tokens + ([eog] if stopped == "eog" else [])
        partly = tokens[:2] + [(t + 1) % llm.n_vocab() for t in tokens[2:]] + tokens[2:]
        wrong = [(t + 7) % llm.n_vocab() for t in tokens] or [3, 4, 5]
        for hint in (right, partly, wrong):
            before = decoder.counts["drafted"]
            got = decoder.run([Request(prompt, max_tokens=12, hints=[hint])], step_fn=draft_step)[0]
            assert (got.generated, got.stopped) == (tokens, stopped), hint
            assert decoder.counts["drafted"] > before or len(tokens) <= 1  # a draft was checked
        side_by_side = decoder.run([Request(prompt, max_tokens=12, hints=[h]) for h in (right, partly, wrong)],
                                   step_fn=draft_step)
        assert all((g.generated, g.stopped) == (tokens, stopped) for g in side_by_side)
    assert 0 < decoder.counts["accepted"] < decoder.counts["drafted"]
    decoder.close()


def test_a_right_draft_saves_decode_steps(fixture_model):
    from runtime.decode import Decoder, Request
    from runtime.speculative import draft_step

    llm = fixture_model
    prompt = _prompts(llm)[0]
    tokens, stopped = _plain(llm, [prompt])[0]
    assert len(tokens) >= 3
    right = tokens + ([llm.token_eos()] if stopped == "eog" else [])
    decoder = Decoder(llm, n_ctx=512, threads=1)
    decoder.run([Request(prompt, max_tokens=12)], plain=True)
    steps_plain = decoder.counts["steps"]
    got = decoder.run([Request(prompt, max_tokens=12, hints=[right])], plain=True, step_fn=draft_step)[0]
    assert got.generated == tokens and decoder.counts["steps"] - steps_plain < steps_plain
    decoder.close()


def test_drafts_of_requests_out_of_slot_order_are_checked_against_their_own_rows(fixture_model):
    """The decoder lays a batch out by slot: each request's draft must still be checked against its own rows when
    the requests come in another order than their slots."""
    from runtime.decode import Decoder, Request
    from runtime.speculative import draft_step

    llm = fixture_model
    prompts = _prompts(llm)[:3]
    expected = _plain(llm, prompts)
    right = [tokens + ([llm.token_eos()] if stopped == "eog" else []) for tokens, stopped in expected]
    decoder = Decoder(llm, n_seq=3, n_ctx=512, threads=1)
    decoder.run([Request(p, max_tokens=12) for p in prompts])  # slot i now holds prompt i's prefix
    got = decoder.run([Request(p, max_tokens=12, hints=[h]) for p, h in zip(prompts[::-1], right[::-1])],
                      step_fn=draft_step)
    assert [s.slot for s in got] == [2, 1, 0]
    assert [(s.generated, s.stopped) for s in got] == expected[::-1]
    assert decoder.counts["accepted"] > 0
    decoder.close()
