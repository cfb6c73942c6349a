"""Greedy decoding of several prompts at once in one llama.cpp context: how the baseline ladder costs little more
than one rung.

Each ladder rung gets its own sequence in a shared (unified) KV cache, and one `llama_decode` call carries one token
of every rung still generating: on a CPU a decode step is bound by reading the weights, which are read once for all
the rungs' tokens. Each sequence also keeps its previous prompt in the cache and re-evaluates only what differs, so
a rung whose prompts share a long prefix (the system prompt, the fixed shots) pays for that prefix once per eval
rather than once per question. Decoding is argmax, stopping on any end-of-generation token, as
`runtime.generate.greedy_generate` does, and each step also checks a free draft of the next tokens per sequence
(runtime.speculative: another rung's answer, prompt lookup), so one step can confirm several tokens. A batched step
can round differently from a single-sequence one, so an answer may differ in rare near-ties from the one-at-a-time
loop, but it is the same on every run.

`time_alone` measures one request from an empty cache as a single llama.cpp user sees it: time to first token (the
whole prompt processed) and total time, one token per decode step. No drafts there: llama.cpp serves without
speculative decoding by default, and prompt lookup in a few-shot prompt's own shots would flatter the prompted
rungs' totals against the fine-tune's (its short prompt holds no answers to copy).

Example:
    decoder = ParallelDecoder(llm, n_seq=3, n_ctx=2048)
    answers = decoder.generate([tokens_a, tokens_b, tokens_c], max_tokens=64)
    decoder.close()
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from edgeft.errors import EdgeftError
from runtime.generate import Generation, detokenize

BATCH = 512
# How many answer tokens a metric's `hopeless` check reads: the first word is settled by then (a fence and a
# keyword are a few tokens), and checking longer answers would only cost detokenizing.
HOPELESS_WINDOW = 12
RECENT = 4  # answers per sequence kept as drafts for the next prompts


def _common_prefix(cached: Sequence[int], tokens: Sequence[int]) -> int:
    shared = 0
    for old, new in zip(cached, tokens):
        if old != new:
            break
        shared += 1
    return min(shared, len(tokens) - 1)  # at least one token is evaluated, for fresh logits


def fit_prompt(tokens: Sequence[int], n_ctx: int) -> list[int]:
    """A prompt that leaves no room for an answer is refused, as greedy_generate does (run_eval checks every
    prompt before generating, so this is the last line of defence, not the usual path)."""
    if len(tokens) >= n_ctx:
        raise EdgeftError(f"the prompt is {len(tokens)} tokens, which does not fit the context of {n_ctx} tokens "
                          "(with room for the answer); raise --ctx or shorten the conversation")
    return list(tokens)


class ParallelDecoder:
    """`n_seq` sequences of up to `n_ctx` tokens each, in one context over `llm`'s weights."""

    def __init__(self, llm, *, n_seq: int, n_ctx: int):
        import llama_cpp

        self.llm, self.n_seq, self.n_ctx = llm, n_seq, n_ctx
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = params.n_ubatch = BATCH
        params.n_seq_max = n_seq
        params.kv_unified = True  # a step attends over one buffer: the sequences' cells side by side
        params.n_threads = llm.context_params.n_threads
        params.n_threads_batch = llm.context_params.n_threads_batch
        params.no_perf = True
        from runtime.load import _quiet

        with _quiet():  # llama.cpp warns on stderr when n_seq x n_ctx passes the training context; we know
            self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise EdgeftError(f"llama.cpp could not make a context of {n_seq} x {n_ctx} tokens; lower --ctx")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
        self.n_vocab = llm.n_vocab()
        self.cached: list[list[int]] = [[] for _ in range(n_seq)]
        self.evaluated = 0  # tokens decoded so far: what the prefix cache saves shows here
        self.steps = 0  # llama_decode calls: what drafts save shows here
        self.drafted = self.accepted = 0  # draft tokens checked, and confirmed
        self.prompt_evaluated = [0] * n_seq  # per sequence, prompt tokens its cached prefix did not cover
        # Each sequence's last answers are drafts too: one rung's answers to like questions are alike (the same SQL
        # shape; a model that rambles rambles the same way).
        self.recent: list[list[list[int]]] = [[] for _ in range(n_seq)]
        # A recurrent state cannot drop a rejected draft's tokens again.
        self.can_draft = not (llama_cpp.llama_model_is_recurrent(llm.model)
                              or llama_cpp.llama_model_is_hybrid(llm.model))

    def close(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    def clear(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)
        self.cached = [[] for _ in range(self.n_seq)]
        self.recent = [[] for _ in range(self.n_seq)]

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> dict[int, list[int]]:
        """Decode (token, position, sequence, wants logits) entries in batches; per sequence, the argmax after each
        of its wanted tokens, in order. A sequence's entries must come in position order: a later batch attends to
        what the earlier ones put in the cache."""
        import llama_cpp

        chosen: dict[int, list[int]] = {}
        for start in range(0, len(entries), BATCH):
            chunk = entries[start:start + BATCH]
            for i, (token, position, seq, wants) in enumerate(chunk):
                self.batch.token[i] = token
                self.batch.pos[i] = position
                self.batch.n_seq_id[i] = 1
                self.batch.seq_id[i][0] = seq
                self.batch.logits[i] = wants
            self.batch.n_tokens = len(chunk)
            self.evaluated += len(chunk)
            self.steps += 1
            status = llama_cpp.llama_decode(self.ctx, self.batch)
            if status != 0:
                raise EdgeftError(f"llama.cpp decode failed (status {status}); the prompts may not fit: lower "
                                  "--shots or raise --ctx")
            for i, (_token, _position, seq, wants) in enumerate(chunk):
                if wants:
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, i),
                                                   shape=(self.n_vocab,))
                    chosen.setdefault(seq, []).append(int(np.argmax(logits)))
        return chosen

    def reuse(self, seq: int, tokens: Sequence[int]) -> list[int]:
        """Keep the cached prefix `tokens` shares with the sequence's previous prompt; the rest, to evaluate."""
        import llama_cpp

        shared = _common_prefix(self.cached[seq], tokens)
        if not llama_cpp.llama_memory_seq_rm(self.memory, seq, shared, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)  # recurrent state: no partial cut
            shared = 0
        self.cached[seq] = list(tokens[:shared])
        self.prompt_evaluated[seq] += len(tokens) - shared
        return list(tokens[shared:])

    def drop(self, seq: int, position: int) -> None:
        """Forget the sequence's cells from `position` on (a draft's rejected tail)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, seq, position, -1)
        self.cached[seq] = self.cached[seq][:position]

    def generate(self, prompts: Sequence[Sequence[int]], *, max_tokens: int, drafting: bool = True,
                 hints: Sequence[Sequence[Sequence[int]]] | None = None, hopeless=None) -> list[Generation]:
        """Greedy answers to up to `n_seq` prompts (token ids), prompt i in sequence i, checking free drafts
        (runtime.speculative; `hints[i]`: extra drafts for prompt i) unless `drafting` is False. `hopeless(text)`
        (a metric's): an answer whose first HOPELESS_WINDOW tokens already cannot score stops there."""
        from runtime.speculative import decode

        if len(prompts) > self.n_seq:
            raise ValueError(f"{len(prompts)} prompts for {self.n_seq} sequences")
        prompts = [fit_prompt(tokens, self.n_ctx) for tokens in prompts]
        started = time.perf_counter()

        def first_token():
            self.first_token_s = time.perf_counter() - started

        own = [list(hints[seq]) if hints else [] for seq in range(len(prompts))]
        sequences = decode(self, prompts, max_tokens=max_tokens, drafting=drafting,
                           hints=[own[seq] + self.recent[seq][::-1] for seq in range(len(prompts))],
                           on_first_token=first_token, give_up=self._give_up(hopeless))
        self.total_s = time.perf_counter() - started
        for seq, sequence in enumerate(sequences):
            self.recent[seq] = (self.recent[seq] + [sequence.answer])[-RECENT:]
        return [Generation(text=detokenize(self.llm, s.generated), n_prompt=len(s.prompt),
                           n_generated=len(s.generated), stopped=s.stopped, tokens=s.generated) for s in sequences]

    def _give_up(self, hopeless):
        if hopeless is None:
            return None
        return lambda tokens: len(tokens) <= HOPELESS_WINDOW and hopeless(detokenize(self.llm, tokens))

    def time_alone(self, tokens: Sequence[int], *, max_tokens: int) -> dict:
        """One request from an empty cache, plain greedy: {"ttft_s", "total_s", "n_generated"}."""
        self.clear()
        generation = self.generate([tokens], max_tokens=max_tokens, drafting=False)[0]
        self.clear()
        return {"ttft_s": self.first_token_s, "total_s": self.total_s, "n_generated": generation.n_generated}
