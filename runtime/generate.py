"""Greedy generation that stops at end-of-generation tokens (the prompt side, template and control tokens, is
runtime.chat_prompt; its names stay importable from here).

Decoding is runtime.decode's loop: argmax (no sampler chain in between), stopping on *any* end-of-generation token
(EOS, EOT, <|im_end|>, <end_of_turn>…), which llama.cpp knows as `llama_vocab_is_eog`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Sequence

from runtime.chat_prompt import (Message, _vocab, embedded_template, merge_system, prompt_tokens,  # noqa: F401
                                 render_chat, token_text)


def is_end_of_generation(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(_vocab(llm), token))


def detokenize(llm, tokens: Sequence[int], *, special: bool = False) -> str:
    """Text of `tokens` via llama.cpp's whole-sequence detokenizer. (llama-cpp-python's `Llama.detokenize`
    converts piece by piece into a 32-byte buffer, which garbles the long whitespace/code tokens of some vocabs.)"""
    import ctypes

    import llama_cpp

    if not tokens:
        return ""
    array = (llama_cpp.llama_token * len(tokens))(*tokens)
    size = max(64, 8 * len(tokens))
    for _attempt in range(2):
        buffer = ctypes.create_string_buffer(size)
        written = llama_cpp.llama_detokenize(_vocab(llm), array, len(tokens), buffer, size, False, special)
        if written >= 0:
            return buffer.raw[:written].decode("utf-8", errors="replace")
        size = -written  # a negative result is the size that was needed
    raise RuntimeError("llama_detokenize failed")


@dataclass
class Generation:
    text: str
    n_prompt: int
    n_generated: int
    stopped: str  # "eog" | "stop" | "max_tokens" | "context" | "cancelled" (runtime.decode)
    tokens: list[int]  # the generated ids, end-of-generation token excluded


def generation(decoder, sequence) -> Generation:
    """A finished runtime.decode Sequence as the callers read it."""
    text = sequence.text if sequence.request.text or sequence.request.stop else decoder.detokenize(sequence.generated)
    return Generation(text=text, n_prompt=len(sequence.request.tokens), n_generated=len(sequence.generated),
                      stopped=sequence.stopped, tokens=list(sequence.generated))


_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def decoder_for(llm):
    """One runtime.decode.Decoder (one slot of the Llama's n_ctx) per loaded model, made on first use; it keeps its
    cells between calls, so a chat's next turn evaluates only what the conversation added."""
    from runtime.decode import Decoder

    decoder = _DECODERS.get(llm)
    if decoder is None or decoder.ctx is None:
        decoder = _DECODERS[llm] = Decoder(llm, n_seq=1, n_ctx=llm.n_ctx())
        weakref.finalize(llm, decoder.close)
    return decoder


def greedy_generate(llm, tokens: Sequence[int], *, max_tokens: int, reuse_prefix: bool = True) -> Generation:
    """Argmax decoding from `tokens` until an end-of-generation token or `max_tokens` (runtime.decode's loop).
    Without `reuse_prefix` the prompt is evaluated from an empty slot: the one-request-at-a-time reference."""
    from runtime.decode import Request

    decoder = decoder_for(llm)
    sequence = decoder.run([Request(list(tokens), max_tokens=max_tokens)], plain=not reuse_prefix)[0]
    return generation(decoder, sequence)


def chat_reply(llm, messages: Sequence[Message], *, max_tokens: int, path: str = "model") -> Generation:
    """Render `messages` with the embedded template and answer greedily."""
    return greedy_generate(llm, prompt_tokens(llm, render_chat(llm, messages, path=path)), max_tokens=max_tokens)
