"""Greedy generation that stops at end-of-generation tokens (the prompt side, template and control tokens, is
runtime.chat_prompt; its names stay importable from here).

Decoding is our own short argmax loop rather than `Llama.generate`: greedy is then exact (no sampler chain in
between) and we stop on *any* end-of-generation token (EOS, EOT, <|im_end|>, <end_of_turn>…), which llama.cpp
knows as `llama_vocab_is_eog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgeft.errors import EdgeftError
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


def last_logits(llm) -> np.ndarray:
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


@dataclass
class Generation:
    text: str
    n_prompt: int
    n_generated: int
    stopped: str  # "eog" | "max_tokens" | "context" | "hopeless" (runtime.parallel: the metric cannot score it)
    tokens: list[int]  # the generated ids, end-of-generation token excluded


def _reusable_prefix(llm, tokens: Sequence[int]) -> int:
    """How many leading tokens of `tokens` are already in the KV cache from the previous call. The baseline's
    prompts all start with the same system prompt and K shots, so this skips most of its prompt processing (what
    llama-server's prompt cache does). At least one token is always evaluated, to get fresh logits."""
    if getattr(llm, "_is_recurrent", False) or getattr(llm, "_is_hybrid", False):
        return 0  # recurrent state cannot be cut back to a prefix
    previous = llm.input_ids[: llm.n_tokens]
    shared = 0
    for cached, token in zip(previous, tokens):
        if int(cached) != token:
            break
        shared += 1
    return min(shared, len(tokens) - 1)


def greedy_generate(llm, tokens: Sequence[int], *, max_tokens: int, reuse_prefix: bool = True) -> Generation:
    """Argmax decoding from `tokens` until an end-of-generation token or `max_tokens`."""
    n_ctx = llm.n_ctx()
    tokens = list(tokens)
    if len(tokens) >= n_ctx:
        # Cutting the prompt would drop the system prompt and BOS and answer another question: refuse instead.
        raise EdgeftError(f"the prompt is {len(tokens)} tokens, which does not fit the context of {n_ctx} tokens "
                          "(with room for the answer); raise --ctx or shorten the conversation")
    shared = _reusable_prefix(llm, tokens) if reuse_prefix else 0
    llm.reset()
    llm.n_tokens = shared  # eval() drops the KV cells from n_tokens on before decoding
    llm.eval(tokens[shared:])
    generated: list[int] = []
    stopped = "max_tokens"
    while len(generated) < max_tokens:
        token = int(np.argmax(last_logits(llm)))
        if is_end_of_generation(llm, token):
            stopped = "eog"
            break
        generated.append(token)
        if llm.n_tokens + 1 >= n_ctx:
            stopped = "context"
            break
        llm.eval([token])
    text = detokenize(llm, generated)
    return Generation(text=text, n_prompt=len(tokens), n_generated=len(generated), stopped=stopped,
                      tokens=generated)


def chat_reply(llm, messages: Sequence[Message], *, max_tokens: int, path: str = "model") -> Generation:
    """Render `messages` with the embedded template and answer greedily."""
    return greedy_generate(llm, prompt_tokens(llm, render_chat(llm, messages, path=path)), max_tokens=max_tokens)
