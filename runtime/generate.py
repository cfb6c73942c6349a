"""Chat rendering with the GGUF's own template, and greedy generation that stops at end-of-generation tokens.

We render with llama-cpp-python's `Jinja2ChatFormatter` (a sandboxed Jinja environment mirroring transformers'
chat-template rules), so the prompt a fine-tune sees here is the one `llama-server`-style apps will build from the
same embedded template. Decoding is our own short argmax loop rather than `Llama.generate`: greedy is then exact
(no sampler chain in between) and we stop on *any* end-of-generation token (EOS, EOT, <|im_end|>, <end_of_turn>…),
which llama.cpp knows as `llama_vocab_is_eog`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from edgeft.errors import EdgeftError

Message = dict  # {"role": str, "content": str}


def _vocab(llm):
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llm.model)


def token_text(llm, token: int) -> str:
    import llama_cpp

    if token < 0:
        return ""
    return llama_cpp.llama_vocab_get_text(_vocab(llm), token).decode("utf-8", errors="replace")


def is_end_of_generation(llm, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(_vocab(llm), token))


def embedded_template(llm, path: str = "model") -> str:
    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        raise EdgeftError(
            f"{path}: the GGUF has no embedded chat template (tokenizer.chat_template); reconvert it with "
            "`edgeft convert`, which embeds the tokenizer's template"
        )
    return template


def merge_system(messages: Sequence[Message]) -> list[Message]:
    """Fold a system turn into the first user turn, for templates (Gemma, Mistral v1) that reject the role."""
    system = [m["content"] for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if system and rest and rest[0]["role"] == "user":
        rest[0]["content"] = "\n\n".join(system) + "\n\n" + rest[0]["content"]
    return rest


@lru_cache(maxsize=16)
def _formatter(template: str, eos: str, bos: str, add_generation_prompt: bool):
    """One compiled template per (template, special tokens): compiling costs ~2 ms, as much as prefilling 50 tokens
    of a small model, and an eval's ladder renders thousands of prompts."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    return Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                               add_generation_prompt=add_generation_prompt)


def render_chat(llm, messages: Sequence[Message], *, add_generation_prompt: bool = True, path: str = "model",
                template: str | None = None) -> str:
    """The prompt text the GGUF's template (or `template`) produces for `messages` (ending with the assistant
    header)."""
    bos = token_text(llm, llm.token_bos())
    eos = token_text(llm, llm.token_eos())
    formatter = _formatter(template or embedded_template(llm, path), eos, bos, add_generation_prompt)
    try:
        return formatter(messages=list(messages)).prompt
    except Exception as first:  # templates signal unsupported roles/orders via raise_exception -> ValueError
        if any(m["role"] == "system" for m in messages):
            try:
                return formatter(messages=merge_system(messages)).prompt
            except Exception:
                pass
        raise EdgeftError(f"{path}: its chat template refused the conversation ({first}); check the roles "
                          "alternate user/assistant") from first


def prompt_tokens(llm, text: str) -> list[int]:
    """Tokenize rendered chat text: special tokens parsed, BOS added only when the model wants one and the
    template did not already write it first (Llama-3 templates start with {{ bos_token }}). The rule is
    `convert.vocab.special.bos_first`, which training applies to the same text too."""
    import llama_cpp

    from convert.vocab.special import bos_first

    tokens = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
    bos = llm.token_bos()
    return bos_first(tokens, bos if llama_cpp.llama_vocab_get_add_bos(_vocab(llm)) and bos >= 0 else None)


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
