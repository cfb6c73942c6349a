"""The draft-checking step of runtime.decode's loop: several answer tokens per `llama_decode` call, the same answer.

Greedy decoding is deterministic, so a guess at the next tokens (a draft) can be checked in one batched forward
pass: evaluate the last token and the draft with logits at every position; where the argmax equals the next draft
token the draft was right. The step keeps the longest right prefix of the draft plus the one token the model chose
after it (the correction, or a bonus token when the whole draft was right), and drops the rest from the KV cache.
Each kept token is the argmax greedy decoding chooses there, given the logits the batched pass computed.

Drafts cost no model: they are copied from text the decoder already holds.
  1. another sequence's answer in the same step that agrees with everything generated so far, continued from
     there, or one of the request's hints (answers to a like question);
  2. prompt lookup: the tokens that followed the latest earlier occurrence of the last NGRAM (down to MIN_NGRAM)
     tokens, in another answer or in this sequence's own prompt and answer.
A draft stops after an end-of-generation token, and at what max_tokens and the slot leave room for.

Where the answer can differ from the plain loop: a drafted position's logits come from a batch of another shape
than a one-token step, and llama.cpp's CPU kernels then may sum in another order (F32 and F16 matrix products,
flash attention over more than 256 cells). With the F32 fixtures that changes no argmax we can see
(tests/test_speculative.py); on quantized models it can, so no reported score comes from this step.

Example:
    sequences = decoder.run(requests, step_fn=draft_step)
"""

from __future__ import annotations

import time
from typing import Sequence

NGRAM = 3  # the longest tail of the context matched against the draft sources
MIN_NGRAM = 2  # one matching token predicts too little: a wrong draft costs its prompt-processing time
MAX_DRAFT = 16  # tokens per draft: longer wrong drafts cost more than the steps the right ones save


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


def _cut_at_end(decoder, draft: list[int]) -> list[int]:
    for index, token in enumerate(draft):
        if decoder.is_eog(token):
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


def _draft(decoder, sequence, group) -> list[int]:
    request = sequence.request
    room = min(sequence.draft_room, MAX_DRAFT, request.max_tokens - len(sequence.generated) - 1,
               decoder.n_ctx - len(request.tokens) - len(sequence.generated) - 1)
    if room <= 0 or not decoder.can_cut:
        return []
    others = [other.generated for other in group if other is not sequence and other.generated] + request.hints
    context = request.tokens + sequence.generated
    return _cut_at_end(decoder, propose(sequence.generated, context, others, room))


def draft_step(decoder, group) -> None:
    """runtime.decode's plain step for prompts; a sequence past its prompt feeds its last token and a draft, and
    keeps what greedy confirms."""
    from runtime.decode import BATCH, plain_step

    prompts = [s for s in group if len(s.pending) > 1]
    if prompts:  # prompt chunks first, as the plain step feeds them
        plain_step(decoder, prompts)
        return
    entries, plans = [], []
    for sequence in group:
        draft = _draft(decoder, sequence, group)[:max(0, BATCH - len(entries) - 1)]
        fed = decoder.feed(sequence, sequence.pending + draft, len(draft) + 1)
        plans.append((sequence, draft, fed[0][2], len(entries)))
        entries += [(token, slot, position, True) for token, slot, position, _ in fed]
    rows = decoder.decode(entries)  # every entry wants logits: rows[i] is entry i's row (the batch is by slot)
    for sequence, draft, start, first in plans:
        chosen = [decoder.choose(sequence, rows[first + i]) for i in range(len(draft) + 1)]
        kept = accepted_prefix(draft, chosen)
        decoder.counts["drafted"] += len(draft)
        decoder.counts["accepted"] += kept
        if draft:
            sequence.draft_room = min(MAX_DRAFT, 2 * kept + 1)
        if kept < len(draft):
            decoder.cut(sequence.slot, start + 1 + kept)
        if sequence.first_token_s is None:
            sequence.first_token_s = time.perf_counter() - sequence.started
        for token in draft[:kept] + [chosen[kept]]:
            sequence.take(token, decoder)
            if sequence.stopped is not None:
                break
