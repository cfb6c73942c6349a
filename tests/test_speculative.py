"""Speculative verification (runtime.speculative): drafts copied from text the decoder holds, checked in one batched
step, give exactly the answer plain greedy decoding gives, whether the draft is right, partly right or wrong."""

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


def test_speculative_answers_are_greedy_answers_with_right_partly_right_and_wrong_drafts(fixture_model):
    from runtime.generate import greedy_generate
    from runtime.parallel import ParallelDecoder

    llm = fixture_model
    prompts = _prompts(llm)
    expected = [greedy_generate(llm, t, max_tokens=12, reuse_prefix=False) for t in prompts]
    assert any(len(g.tokens) >= 4 for g in expected)
    eog = llm.token_eos()
    decoder = ParallelDecoder(llm, n_seq=3, n_ctx=512)
    for prompt, plain in zip(prompts, expected):
        right = plain.tokens + ([eog] if plain.stopped == "eog" else [])
        partly = plain.tokens[:2] + [(t + 1) % llm.n_vocab() for t in plain.tokens[2:]] + plain.tokens[2:]
        wrong = [(t + 7) % llm.n_vocab() for t in plain.tokens] or [3, 4, 5]
        for hint in (right, partly, wrong):
            before = decoder.drafted
            got = decoder.generate([prompt], max_tokens=12, hints=[[hint]])[0]
            assert (got.tokens, got.stopped) == (plain.tokens, plain.stopped), hint
            assert decoder.drafted > before or len(plain.tokens) <= 1  # a draft was checked
        side_by_side = decoder.generate([prompt, prompt, prompt], max_tokens=12, hints=[[right], [partly], [wrong]])
        assert all((g.tokens, g.stopped) == (plain.tokens, plain.stopped) for g in side_by_side)
    assert 0 < decoder.accepted < decoder.drafted
    decoder.close()


def test_a_right_draft_saves_decode_steps(fixture_model):
    from runtime.generate import greedy_generate
    from runtime.parallel import ParallelDecoder

    llm = fixture_model
    prompt = _prompts(llm)[0]
    plain = greedy_generate(llm, prompt, max_tokens=12, reuse_prefix=False)
    assert len(plain.tokens) >= 3
    right = plain.tokens + ([llm.token_eos()] if plain.stopped == "eog" else [])
    decoder = ParallelDecoder(llm, n_seq=1, n_ctx=512)
    decoder.generate([prompt], max_tokens=12, drafting=False)
    steps_plain = decoder.steps
    decoder.clear()
    got = decoder.generate([prompt], max_tokens=12, hints=[[right]])[0]
    assert got.tokens == plain.tokens and decoder.steps - steps_plain < steps_plain
    decoder.close()


def test_an_answer_given_up_stops_and_the_others_keep_their_greedy_answers(fixture_model):
    from runtime.generate import detokenize, greedy_generate
    from runtime.parallel import ParallelDecoder

    llm = fixture_model
    prompts = _prompts(llm)[:2]
    expected = [greedy_generate(llm, t, max_tokens=12, reuse_prefix=False) for t in prompts]
    assert all(len(g.tokens) >= 3 for g in expected)
    doomed = detokenize(llm, expected[0].tokens[:2])
    decoder = ParallelDecoder(llm, n_seq=2, n_ctx=512)
    got = decoder.generate(prompts, max_tokens=12, drafting=False, hopeless=lambda text: text.startswith(doomed))
    assert got[0].stopped == "hopeless" and got[0].tokens == expected[0].tokens[:len(got[0].tokens)]
    assert len(got[0].tokens) < len(expected[0].tokens)
    assert (got[1].tokens, got[1].stopped) == (expected[1].tokens, expected[1].stopped) or \
        expected[1].text.startswith(doomed)
    decoder.close()
