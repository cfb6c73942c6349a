"""The eval's step for runtime.decode's loop: several requests at once, each answer bit-identical to the same request
decoded alone (one request at a time, from an empty cache, the prompt in one batch, then one token per decode call:
what llama-server answers, and what every reported score must be).

What llama.cpp's CPU kernels make of a token depends on the batch it is decoded in, not only on the token:
  - flash attention over one sequence's one token takes a kernel that splits the cells among threads once the
    sequence holds more than 256 cells (its padded cell count reaches 512); a token decoded beside other sequences'
    tokens takes the one-pass kernel. Under 256 cells both take the one-pass kernel, which skips masked cells, so
    the cells of other sequences change nothing;
  - a matrix product over one row and over several rows may sum in another order (F32 and F16 weights, repacked
    quant types), depending on the model's tensor types;
  - a prompt evaluated in other chunks (after a cached prefix) takes other attention kernels.
So a request's prompt is evaluated alone from an empty slot; its answer tokens are decoded beside other requests'
only while it holds at most LONE_CELLS cells and only on a model whose rows are measured to come out the same in
every batch size used (`rows_are_batch_exact`, bitwise, on a probe); otherwise alone. Measured on SmolLM2-135M
Q4_1: 8 requests under 256 cells decoded 4 at a time gave the lone answers exactly; past 256 cells 3 of 8 differed.

Example:
    decoder.run(requests, fresh=True, step_fn=BatchExact(decoder))
"""

from __future__ import annotations

import numpy as np

LONE_CELLS = 256  # past this a lone sequence's one-token step takes flash attention's split-KV kernel
PROBE = 12  # tokens of the probe prompt
PROBE_STEPS = 3  # one-token steps compared after it


class BatchExact:
    """The step function: prompts one at a time, then the answer tokens of every request under LONE_CELLS cells
    in one decode call when the model passed the probe, the others one per call."""

    def __init__(self, decoder):
        self.batched = decoder.n_seq > 1 and rows_are_batch_exact(decoder)
        self.tokens_batched = 0  # answer tokens decoded beside other requests

    def __call__(self, decoder, group) -> None:
        from runtime.decode import plain_step

        prompting = [s for s in group if len(s.pending) > 1]
        if prompting:
            plain_step(decoder, prompting[:1])
            return
        short = [s for s in group if len(decoder.cached[s.slot][1]) < LONE_CELLS]
        if self.batched and len(short) > 1:
            self.tokens_batched += len(short)
            plain_step(decoder, short)
            return
        for sequence in group:
            plain_step(decoder, [sequence])


def _probe_logits(decoder, prompt: list[int], copies: int) -> list[np.ndarray]:
    """Logits of the probe prompt's last token and of PROBE_STEPS argmax steps, the prompt in slot 0 evaluated
    alone and its copies in slots 1.. beside it; the rows of slot 0 and of the last copy, per step."""
    decoder.clear()
    for slot in range(copies):
        rows = decoder.decode([(t, slot, i, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    token = int(np.argmax(decoder.logits(rows[-1])))
    seen = []
    for step in range(PROBE_STEPS):
        rows = decoder.decode([(token, slot, len(prompt) + step, True) for slot in range(copies)])
        seen.append(np.array(decoder.logits(rows[-1])))
        token = int(np.argmax(seen[-1]))
    return seen


def rows_are_batch_exact(decoder) -> bool:
    """True when a one-token step computes bit-identical logits alone and beside 1 .. n_seq-1 other sequences (all
    slots must be free; the cells are cleared after)."""
    import llama_cpp

    vocab = decoder.vocab
    prompt = [t % decoder.n_vocab for t in range(1, PROBE + 1)]
    bos = llama_cpp.llama_vocab_bos(vocab)
    if bos >= 0:
        prompt[0] = bos
    try:
        alone = _probe_logits(decoder, prompt, 1)
        return all(all(np.array_equal(a, b) for a, b in zip(alone, _probe_logits(decoder, prompt, copies)))
                   for copies in range(2, decoder.n_seq + 1))
    finally:
        decoder.clear()
