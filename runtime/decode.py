"""The one decoding core: every answer edgeft generates (chat, the judge, the eval and its ladder, the fleet eval,
the server) comes out of `Decoder.run`.

A Decoder owns one llama.cpp context over a loaded model with `n_seq` slots: each slot is a sequence with its own
stream of `n_ctx` KV cells (llama.cpp's non-unified KV cache), so a sequence's cells sit where they would in a
context of its own. One `step` is one `llama_decode` call carrying, for every active sequence of one adapter group,
its next prompt chunk or its last token (and, with the draft-checking step, a draft to confirm). Requests join
between steps and leave when they stop; the groups (sequences under the same LoRA adapter: llama.cpp applies one
adapter set per decode call) take turns, so none starves.

One stop rule (`Sequence.take`): an end-of-generation token, a stop string, max_tokens, or no room left in the
slot. One refusal (`fit`): a prompt that leaves no room for an answer. One prefix cache, keyed by (adapter,
tokens): a slot keeps the cells of its last sequence, and a request under the same adapter reuses the longest
shared prefix; cells computed under another adapter are never reused (their keys and values went through that
adapter's deltas).

Numerics: flash attention is chosen as llama-server chooses it (auto: on for the CPU), prompts are evaluated in
chunks of BATCH tokens as llama-server does, and logits are asked for the last prompt token only; so a request
decoded alone from an empty slot (`plain=True`: no prefix reuse, no batching with others) is what llama-server
answers one request at a time, bit for bit (measured; tests/test_decode.py checks it). Prefix reuse, batching and
drafts can change how llama.cpp's kernels sum; runtime.batching is the eval's step that batches only where that
changes no bit.

Example:
    decoder = Decoder(llm, n_seq=2, n_ctx=1024)
    answers = decoder.run([Request(tokens_a, max_tokens=64), Request(tokens_b, max_tokens=64, adapter="sql")])
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence as Seq

import numpy as np

from convert.common.errors import EdgeftError

BATCH = 512  # llama-server's ubatch: a prompt is evaluated in chunks of this many tokens


def fit(tokens: Seq[int], n_ctx: int) -> list[int]:
    """The prompt, when it leaves room for at least one answer token in `n_ctx`; else one clear refusal (cutting
    the prompt would drop the system prompt and BOS and answer another question)."""
    tokens = list(tokens)
    if not tokens:
        raise EdgeftError("the prompt is empty")
    if len(tokens) >= n_ctx:
        raise EdgeftError(f"the prompt is {len(tokens)} tokens, which does not fit the context of {n_ctx} tokens "
                          "(with room for the answer); raise --ctx or shorten the conversation")
    return tokens


@dataclass
class Request:
    tokens: list[int]
    max_tokens: int
    adapter: str | None = None  # None: the base model alone
    stop: tuple[str, ...] = ()
    temperature: float = 0.0  # 0: argmax
    top_p: float = 1.0
    seed: int | None = None
    hints: list[list[int]] = field(default_factory=list)  # drafts for the draft-checking step (like answers)
    text: bool = False  # keep the detokenized text current (streaming, stop strings)
    cancelled: Callable[[], bool] = lambda: False


@dataclass
class Sequence:
    """A request in a slot: what is fed next, what was generated, and why it stopped."""

    request: Request
    slot: int = -1
    pending: list[int] = field(default_factory=list)  # tokens to evaluate next (prompt rest, or the last token)
    generated: list[int] = field(default_factory=list)
    stopped: str | None = None  # "eog" | "stop" | "max_tokens" | "context" | "cancelled"
    text: str = ""
    draft_room: int = 4
    first_token_s: float | None = None
    started: float = field(default_factory=time.perf_counter)
    total_s: float | None = None
    rng: np.random.Generator | None = None

    @property
    def finish_reason(self) -> str:
        """As OpenAI's API says it."""
        return {"eog": "stop", "stop": "stop", "cancelled": "cancelled"}.get(self.stopped, "length")

    def take(self, token: int, decoder: "Decoder") -> None:
        """Append one chosen token under the one stop rule: end of generation, a stop string, max_tokens, room."""
        request = self.request
        if decoder.is_eog(token):
            self.stopped = "eog"
            return
        self.generated.append(token)
        if request.text or request.stop:
            self.text = decoder.detokenize(self.generated)
            cut = _find_stop(self.text, request.stop)
            if cut is not None:
                self.text, self.stopped = self.text[:cut], "stop"
                return
        if len(self.generated) >= request.max_tokens:
            self.stopped = "max_tokens"
        elif len(request.tokens) + len(self.generated) >= decoder.n_ctx:
            self.stopped = "context"
        else:
            self.pending = [token]


def _find_stop(text: str, stops: Seq[str]) -> int | None:
    hits = [index for index in (text.find(stop) for stop in stops if stop) if index >= 0]
    return min(hits) if hits else None


class Decoder:
    """`n_seq` slots of `n_ctx` tokens in one context over `llm`'s weights; `adapters` maps a name to a handle
    from llama_adapter_lora_init (the server's, the chat's --lora)."""

    def __init__(self, llm, *, n_seq: int = 1, n_ctx: int, adapters: dict | None = None, threads: int | None = None):
        import llama_cpp

        from runtime.load import _quiet

        self.llm, self.n_seq, self.n_ctx = llm, n_seq, n_ctx
        self.adapters = dict(adapters or {})
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = params.n_ubatch = BATCH
        params.n_seq_max = n_seq
        params.kv_unified = False  # each sequence its own stream: its cells where a lone context puts them
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO  # llama-server's default
        params.n_threads = threads or llm.context_params.n_threads
        params.n_threads_batch = threads or llm.context_params.n_threads_batch
        params.no_perf = True
        with _quiet():  # llama.cpp warns when n_seq x n_ctx passes the training context; each slot does not
            self.ctx = llama_cpp.llama_init_from_model(llm.model, params)
        if not self.ctx:
            raise EdgeftError(f"llama.cpp could not make a context of {n_seq} x {n_ctx} tokens; lower --ctx")
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(BATCH, 0, 1)
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.cached: list[tuple[str | None, list[int]]] = [(None, []) for _ in range(n_seq)]
        self.free = list(range(n_seq))
        self.applied: str | None = None
        self.turn = 0  # which adapter group steps next
        self.counts = {"evaluated": 0, "steps": 0, "drafted": 0, "accepted": 0, "prompt_evaluated": 0,
                       "switches": 0}
        self.can_cut = not (llama_cpp.llama_model_is_recurrent(llm.model)
                            or llama_cpp.llama_model_is_hybrid(llm.model))

    def close(self) -> None:
        import llama_cpp

        if self.ctx:
            llama_cpp.llama_batch_free(self.batch)
            llama_cpp.llama_free(self.ctx)
            self.ctx = None

    # ---- tokens ---------------------------------------------------------------------------------------------

    def is_eog(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def detokenize(self, tokens: Seq[int]) -> str:
        from runtime.generate import detokenize

        return detokenize(self.llm, tokens)

    # ---- slots and the prefix cache -------------------------------------------------------------------------

    def admit(self, request: Request, *, fresh: bool = False) -> Sequence:
        """Put `request` in a free slot: the one whose cells share the longest prefix under the same adapter
        (none when `fresh`: an empty slot, as a lone request sees it)."""
        import llama_cpp

        tokens = fit(request.tokens, self.n_ctx)
        if request.adapter is not None and request.adapter not in self.adapters:
            raise KeyError(request.adapter)
        if not self.free:
            raise RuntimeError("no free slot")
        shares = {slot: 0 if fresh or not self.can_cut else self.shared(slot, request.adapter, tokens)
                  for slot in self.free}
        slot = max(self.free, key=lambda s: self._placement(s, request.adapter, shares[s]))
        self.free.remove(slot)
        shared = shares[slot]
        if not llama_cpp.llama_memory_seq_rm(self.memory, slot, shared, -1):
            llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)  # a recurrent state cannot be cut back
            shared = 0
        self.cached[slot] = (request.adapter, tokens[:shared])
        self.counts["prompt_evaluated"] += len(tokens) - shared
        rng = np.random.default_rng(request.seed) if request.temperature > 0 else None
        return Sequence(request, slot=slot, pending=tokens[shared:], rng=rng)

    def _placement(self, slot: int, adapter: str | None, share: int) -> tuple:
        """How good free `slot` is for a request under `adapter` (larger is better).

        llama.cpp's non-unified KV cache puts only sequences with consecutive ids in one ubatch, so an adapter group
        spread over non-adjacent slots costs a pass over the weights per run of adjacent slots, in every step
        (measured on SmolLM2-135M: 8 single tokens in 4 runs of 2 took 74 ms a step, in one run 34 ms). So: next to
        a running sequence of the same adapter first, then the longest cached prefix, then as far as possible from
        other adapters' running sequences (a new group starts at the other end), then the lowest slot."""
        busy = [s for s in range(self.n_seq) if s not in self.free]
        beside = any(abs(slot - s) == 1 and self.cached[s][0] == adapter for s in busy)
        apart = min((abs(slot - s) for s in busy if self.cached[s][0] != adapter), default=self.n_seq)
        return beside, share, apart, -slot

    def shared(self, slot: int, adapter: str | None, tokens: Seq[int]) -> int:
        """How many leading `tokens` the slot holds computed under `adapter`; at least one token is always left to
        evaluate, for fresh logits. Another adapter's cells share nothing."""
        owner, cached = self.cached[slot]
        if owner != adapter:
            return 0
        count = 0
        for old, new in zip(cached, tokens):
            if old != new:
                break
            count += 1
        return min(count, len(tokens) - 1)

    def release(self, sequence: Sequence) -> None:
        if sequence.slot >= 0 and sequence.slot not in self.free:
            self.free.append(sequence.slot)
        sequence.total_s = time.perf_counter() - sequence.started

    def clear(self) -> None:
        """Forget every slot's cells (all slots must be free)."""
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)
        self.cached = [(None, []) for _ in range(self.n_seq)]

    def reset(self) -> None:
        """After a failed step: every slot free and empty."""
        self.free = list(range(self.n_seq))
        self.clear()

    # ---- one llama_decode call ------------------------------------------------------------------------------

    def use(self, adapter: str | None) -> None:
        """The adapter set of the next decode call; the KV cache stays (each slot's cells are its own)."""
        import llama_cpp

        if adapter == self.applied:
            return
        if adapter is None:
            status = llama_cpp.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            array = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.adapters[adapter])
            status = llama_cpp.llama_set_adapters_lora(self.ctx, array, 1, (ctypes.c_float * 1)(1.0))
        if status:
            raise RuntimeError(f"llama_set_adapters_lora failed ({status})")
        self.applied = adapter
        self.counts["switches"] += 1

    def decode(self, entries: Seq[tuple[int, int, int, bool]]) -> list[int]:
        """One llama_decode of (token, slot, position, wants logits) entries (at most BATCH); the batch row of each
        wanted entry, in the order given.

        The batch is laid out by slot (a stable sort: a sequence's tokens keep their order): llama.cpp splits it
        into ubatches of consecutive sequence ids in batch order, so slots 3, 0, 1, 2 in that order would take
        two passes over the weights where 0, 1, 2, 3 take one."""
        import llama_cpp

        order = sorted(range(len(entries)), key=lambda index: entries[index][1])
        row_of = {index: row for row, index in enumerate(order)}
        for i, (token, slot, position, wants) in enumerate(entries[index] for index in order):
            self.batch.token[i] = token
            self.batch.pos[i] = position
            self.batch.n_seq_id[i] = 1
            self.batch.seq_id[i][0] = slot
            self.batch.logits[i] = wants
        self.batch.n_tokens = len(entries)
        self.counts["evaluated"] += len(entries)
        self.counts["steps"] += 1
        status = llama_cpp.llama_decode(self.ctx, self.batch)
        if status != 0:
            raise EdgeftError(f"llama.cpp decode failed (status {status}); the prompts may not fit: raise --ctx")
        return [row_of[i] for i, entry in enumerate(entries) if entry[3]]

    def logits(self, row: int) -> np.ndarray:
        import llama_cpp

        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self.ctx, row), shape=(self.n_vocab,))

    def choose(self, sequence: Sequence, row: int) -> int:
        logits = self.logits(row)
        request = sequence.request
        if request.temperature <= 0:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float64) / request.temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if request.top_p < 1.0:
            order = np.argsort(-probs)
            keep = order[: int(np.searchsorted(np.cumsum(probs[order]), request.top_p)) + 1]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(sequence.rng.choice(len(probs), p=probs))

    def feed(self, sequence: Sequence, tokens: Seq[int], budget: int) -> list[tuple[int, int, int, bool]]:
        """Entries for the next `budget` of `tokens` in the sequence's slot (logits for the last one only)."""
        adapter, cached = self.cached[sequence.slot]
        tokens = list(tokens[:budget])
        self.cached[sequence.slot] = (adapter, cached + tokens)
        start = len(cached)
        return [(token, sequence.slot, start + i, False) for i, token in enumerate(tokens)]

    def cut(self, slot: int, position: int) -> None:
        """Forget the slot's cells from `position` on (a draft's rejected tail)."""
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.memory, slot, position, -1)
        adapter, cached = self.cached[slot]
        self.cached[slot] = (adapter, cached[:position])

    # ---- the loop -------------------------------------------------------------------------------------------

    def step(self, active: list[Sequence], step_fn=None) -> None:
        """One decode call for the next adapter group of `active` (groups take turns)."""
        groups: dict = {}
        for sequence in active:
            groups.setdefault(sequence.request.adapter, []).append(sequence)
        keys = sorted(groups, key=lambda key: (key is not None, key or ""))
        group = groups[keys[self.turn % len(keys)]]
        self.turn += 1
        self.use(group[0].request.adapter)
        (step_fn or plain_step)(self, group)

    def run(self, requests: Iterable[Request], *, plain: bool = False, fresh: bool = False, step_fn=None,
            admit: Callable[[bool], list[Request] | None] | None = None,
            on_step: Callable[[list[Sequence]], None] | None = None) -> list[Sequence]:
        """Decode `requests` until every one has stopped; the sequences, in the order they came. `plain`: one
        request at a time from an empty slot, one token per decode call (the reference every reported score
        uses). `fresh`: every request from an empty slot, several at a time. `admit(idle)` hands in more requests between steps (it may block while `idle`; None ends the loop);
        `on_step(active)` sees each step's sequences (streaming)."""
        waiting, done, active = list(requests), [], []
        while True:
            if admit is not None:
                more = admit(not active and not waiting)
                if more is None:
                    return done
                waiting += more
            while waiting and self.free and not (plain and active):
                active.append(self.admit(waiting.pop(0), fresh=plain or fresh))
                done.append(active[-1])
            if not active:
                if admit is None:
                    return done
                continue
            for sequence in active:
                if sequence.stopped is None and sequence.request.cancelled():
                    sequence.stopped = "cancelled"
            live = [s for s in active if s.stopped is None]
            if live:
                self.step(live, step_fn)
            if on_step is not None:
                on_step(active)
            for sequence in [s for s in active if s.stopped is not None]:
                self.release(sequence)
                active.remove(sequence)


def plain_step(decoder: Decoder, group: list[Sequence]) -> None:
    """Every sequence's last token, and prompt chunks in what is left of the call's BATCH tokens (first come, first
    served), in one decode call; one token chosen for each sequence whose prompt is done."""
    entries, owners = [], []
    budget = BATCH - sum(1 for s in group if len(s.pending) == 1)
    for sequence in group:
        take = 1 if len(sequence.pending) == 1 else min(len(sequence.pending), budget)
        if take <= 0:
            continue
        budget -= take if len(sequence.pending) > 1 else 0
        fed = decoder.feed(sequence, sequence.pending, take)
        sequence.pending = sequence.pending[take:]
        if not sequence.pending:
            token, slot, position, _ = fed[-1]
            fed[-1] = (token, slot, position, True)
            owners.append(sequence)
        entries += fed
    rows = decoder.decode(entries)
    for sequence, row in zip(owners, rows):
        if sequence.first_token_s is None:
            sequence.first_token_s = time.perf_counter() - sequence.started
        sequence.take(decoder.choose(sequence, row), decoder)
