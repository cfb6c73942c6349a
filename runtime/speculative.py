"""Greedy decoding that checks free drafts: several answer tokens per `llama_decode` step, the same answer.

Greedy decoding is deterministic, so a guess at the next tokens (a draft) can be checked in one batched forward
pass: evaluate the last token and the draft with logits at every position; where the argmax equals the next draft
token the draft was right. The step keeps the longest right prefix of the draft plus the one token the model chose
after it (the correction, or a bonus token when the whole draft was right), and drops the rest from the KV cache.
Each kept token is exactly the argmax greedy decoding would have chosen there, so the answer is greedy's.

Drafts cost no model: they are copied from text the decoder already holds.
  1. another sequence's answer in the same step that agrees with everything generated so far (the ladder's rungs
     answer the same question and often write the same SQL), continued from there;
  2. prompt lookup: the tokens that followed the latest earlier occurrence of the last NGRAM (down to MIN_NGRAM)
     tokens, in another sequence's answer or in this sequence's own prompt and answer (the shots hold answers like
     the one being written; a model that repeats itself drafts its own repetition).
A draft stops after an end-of-generation token, and at what max_tokens and the context leave room for.

Why a draft can pay on a CPU: evaluating a token in a batch costs a fraction of a one-token decode step (a step
re-reads every weight for one token). Measured on a 2-core box, SmolLM2-135M Q4_1, one thread: ~19 ms for a step
of one token, ~7 ms per token in batches of 16 to 64. Only a third, so drafts start short (FIRST_DRAFT) and grow
only while they land: on the demo eval about half the draft tokens are right, the fixed rung alone needs 60% fewer
decode steps and ~10% less time, and the ladder's steps drop by a third for about the same time.

Where the answer can differ from the one-token loop: the logits of a drafted position are computed in a batch of
another shape than a one-token step, and the sequence's cells land elsewhere in the shared KV buffer; llama.cpp's
CPU kernels then sum in another order. With F32 weights that changes nothing we can see (tests/test_speculative.py).
With a quantized 135M model it is not only the last bits: measured on SmolLM2-135M Q4_1, moving one
prompt's cells 300 instead of 280 cells into the buffer moved two top logits by 0.36 and swapped them, so 1 to 4
of 60 ladder answers differ between decoding with and without drafts, as the ladder decoded side by side already
differed from one prompt at a time. Each result is deterministic for the same inputs and order. Recurrent and hybrid models cannot drop the rejected part of a draft
from their state, so they decode without drafts.

Example:
    generations = decode(decoder, [tokens_a, tokens_b], max_tokens=64)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

NGRAM = 3  # the longest tail of the context matched against the draft sources
MIN_NGRAM = 2  # one matching token predicts too little: a wrong draft costs its prompt-processing time
MAX_DRAFT = 16  # tokens per draft: longer wrong drafts cost more than the steps the right ones save
FIRST_DRAFT = 4  # a sequence's first draft; each next one is twice what its last draft got right, plus one


@dataclass
class _Sequence:
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    stopped: str | None = None
    finished_with: list[int] = field(default_factory=list)  # the end-of-generation token, once seen
    hints: list[list[int]] = field(default_factory=list)  # caller's drafts: answers expected to be alike
    draft_room: int = FIRST_DRAFT  # drafts that keep failing shrink, drafts that keep landing grow

    @property
    def answer(self) -> list[int]:
        """What another sequence may draft from: the answer so far, ending with its end token when it ended."""
        return self.generated + self.finished_with


def _latest_continuation(source: Sequence[int], tail: Sequence[int], end: int) -> list[int] | None:
    """What follows the latest occurrence of `tail` that starts before `end - len(tail)` in `source`."""
    n = len(tail)
    for start in range(min(end, len(source)) - n, -1, -1):
        if list(source[start:start + n]) == tail and start + n < len(source):
            return list(source[start + n:])
    return None


def propose(generated: Sequence[int], context: Sequence[int], others: Sequence[Sequence[int]],
            limit: int) -> list[int]:
    """A draft of at most `limit` tokens to follow `context` (prompt + generated), from other sequences' answers
    (`others`) and the context itself; [] when nothing matches."""
    if limit <= 0:
        return []
    generated = list(generated)
    for answer in others:  # the first agreeing answer wins: the caller lists the likeliest first
        if len(answer) > len(generated) and list(answer[:len(generated)]) == generated:
            return list(answer[len(generated):len(generated) + limit])
    for n in range(NGRAM, MIN_NGRAM - 1, -1):
        if len(context) < n:
            continue
        tail = list(context[-n:])
        for answer in others:
            found = _latest_continuation(answer, tail, len(answer))
            if found:
                return found[:limit]
        found = _latest_continuation(context, tail, len(context) - 1)  # not the tail itself
        if found:
            return found[:limit]
    return []


def _cut_at_end(llm, draft: list[int]) -> list[int]:
    from runtime.generate import is_end_of_generation

    for index, token in enumerate(draft):
        if is_end_of_generation(llm, token):
            return draft[:index + 1]
    return draft


def accepted_prefix(draft: Sequence[int], chosen: Sequence[int]) -> int:
    """How many draft tokens greedy decoding confirms: chosen[i] is the argmax after the i-th fed token (the last
    generated one first), so draft[i] is right when it equals chosen[i] and every earlier one was right."""
    count = 0
    for token, argmax in zip(draft, chosen):
        if token != argmax:
            break
        count += 1
    return count


def _take(sequence: _Sequence, tokens: Sequence[int], llm, *, max_tokens: int, n_ctx: int) -> None:
    """Append the step's new tokens with the one-token loop's stop rules, in its order: end of generation, then
    max_tokens, then the context."""
    from runtime.generate import is_end_of_generation

    for token in tokens:
        if is_end_of_generation(llm, token):
            sequence.stopped, sequence.finished_with = "eog", [token]
            return
        sequence.generated.append(token)
        if len(sequence.generated) >= max_tokens:
            sequence.stopped = "max_tokens"
            return
        if len(sequence.prompt) + len(sequence.generated) >= n_ctx:
            sequence.stopped = "context"
            return


def _draft_for(decoder, sequences: Sequence[_Sequence], index: int, *, max_tokens: int, drafting: bool) -> list[int]:
    sequence = sequences[index]
    room = min(sequence.draft_room, max_tokens - len(sequence.generated) - 1,
               decoder.n_ctx - len(sequence.prompt) - len(sequence.generated) - 1)
    if not drafting or room <= 0 or MAX_DRAFT <= 0:
        return []
    others = [other.answer for i, other in enumerate(sequences) if i != index and other.answer] + sequence.hints
    return _cut_at_end(decoder.llm, propose(sequence.generated, sequence.prompt + sequence.generated, others, room))


def _step(decoder, sequences: Sequence[_Sequence], feeds: dict[int, list[int]], drafts: dict[int, list[int]], *,
          max_tokens: int) -> None:
    """One decode of every feed (tokens not yet in the cache) and its draft; keep what greedy confirms."""
    entries, starts = [], {}
    for seq, feed in feeds.items():
        starts[seq] = len(decoder.cached[seq])
        tokens = feed + drafts[seq]
        entries += [(token, starts[seq] + i, seq, i >= len(feed) - 1) for i, token in enumerate(tokens)]
        decoder.cached[seq] = decoder.cached[seq] + tokens
    chosen = decoder._decode(entries)
    for seq, feed in feeds.items():
        draft = drafts[seq]
        kept = accepted_prefix(draft, chosen[seq])
        decoder.drafted += len(draft)
        decoder.accepted += kept
        if draft:
            sequences[seq].draft_room = min(MAX_DRAFT, 2 * kept + 1)
        if kept < len(draft):
            decoder.drop(seq, starts[seq] + len(feed) + kept)
        _take(sequences[seq], draft[:kept] + [chosen[seq][kept]], decoder.llm, max_tokens=max_tokens,
              n_ctx=decoder.n_ctx)


def decode(decoder, prompts: Sequence[Sequence[int]], *, max_tokens: int, drafting: bool = True,
           hints: Sequence[Sequence[Sequence[int]]] | None = None, on_first_token=None,
           give_up=None) -> list[_Sequence]:
    """Greedy answers to `prompts`, prompt i in sequence i of `decoder` (a runtime.parallel.ParallelDecoder).
    `hints[i]`: token lists to draft sequence i from first (answers to a like question). `on_first_token` is
    called once the prompts' own step is done. `give_up(tokens)`: True stops that answer there
    (stopped "hopeless": the metric says no continuation can score)."""
    drafting = drafting and decoder.can_draft
    sequences = [_Sequence(list(tokens), hints=[list(h) for h in (hints[i] if hints else ())], draft_room=FIRST_DRAFT)
                 for i, tokens in enumerate(prompts)]
    feeds = {seq: decoder.reuse(seq, sequence.prompt) for seq, sequence in enumerate(sequences)}
    first = True
    while feeds:
        drafts = {seq: _draft_for(decoder, sequences, seq, max_tokens=max_tokens, drafting=drafting)
                  for seq in feeds}
        _step(decoder, sequences, feeds, drafts, max_tokens=max_tokens)
        if first and on_first_token is not None:
            on_first_token()
        first = False
        for sequence in sequences:
            if sequence.stopped is None and give_up is not None and give_up(sequence.generated):
                sequence.stopped = "hopeless"
        feeds = {seq: [sequence.generated[-1]] for seq, sequence in enumerate(sequences) if sequence.stopped is None}
    return sequences
