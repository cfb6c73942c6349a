"""A conversation into the ids llama.cpp is fed: the GGUF's own chat template, rendered, then tokenized so that
only the template's markup yields control tokens (`convert.vocab.chat_spans`).

`render_chat` and `prompt_tokens` are the one way runtime/ turns messages into a prompt (eval, the ladder, chat,
serve, the decoders). Rendering uses llama-cpp-python's `Jinja2ChatFormatter` (a sandboxed Jinja environment
mirroring transformers' chat-template rules, `tools=` included), so the prompt a fine-tune sees here is the one
`llama-server`-style apps build from the same embedded template.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from convert.vocab.chat_spans import ChatText, Special, may_hold, render_with_spans, require_spans, split_controls
from convert.common.errors import EdgeftError

Message = dict  # {"role": str, "content": str, optional "tool_calls", "tool_call_id", "name"}


def _vocab(llm):
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llm.model)


def token_text(llm, token: int) -> str:
    import llama_cpp

    if token < 0:
        return ""
    return llama_cpp.llama_vocab_get_text(_vocab(llm), token).decode("utf-8", errors="replace")


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
                template: str | None = None, tools: list | None = None) -> ChatText:
    """The prompt text the GGUF's template (or `template`) produces for `messages` (ending with the assistant
    header), as ChatText: it knows which characters came from the messages, for `prompt_tokens`."""
    bos = token_text(llm, llm.token_bos())
    eos = token_text(llm, llm.token_eos())
    formatter = _formatter(template or embedded_template(llm, path), eos, bos, add_generation_prompt)

    def render(msgs, tool_list):
        return formatter(messages=msgs, tools=tool_list).prompt

    try:
        return render_with_spans(render, messages, tools)
    except EdgeftError:  # it rendered, and dropped a tool call: said as it is
        raise
    except Exception as first:  # templates signal unsupported roles/orders via raise_exception -> ValueError
        if any(m["role"] == "system" for m in messages):
            try:
                return render_with_spans(render, merge_system(messages), tools)
            except Exception:  # noqa: BLE001 - the first refusal is the one to report
                pass
        raise EdgeftError(f"{path}: its chat template refused the conversation ({first}); check the roles "
                          "alternate user/assistant") from first


def specials(llm) -> list[Special]:
    """The vocabulary's special tokens as llama.cpp partitions text at them (CONTROL/UNKNOWN: only with special
    parsing; USER_DEFINED: always), read once per loaded model."""
    cached = getattr(llm, "_edgeft_specials", None)
    if cached is not None:
        return cached
    import llama_cpp

    vocab = _vocab(llm)
    found = []
    for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
                   | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN):
            found.append((Special(token_text(llm, token),
                                  bool(attr & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN)),
                                  bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP),
                                  bool(attr & llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP)), token))
    llm._edgeft_specials = [special for special, _ in found]
    llm._edgeft_special_ids = {special.text: token for special, token in reversed(found)}
    return llm._edgeft_specials


def _tokenize(llm, text: str, limit: int | None = None) -> list[int]:
    """Control tokens from the markup only (`convert.vocab.chat_spans`): the text cut at the control tokens outside
    the messages' spans, each piece tokenized without special parsing. For plain text (a completion prompt, a KLD
    text: the caller's own markup) every control token's text counts. The same ids llama.cpp's whole-text
    tokenization gives when no message holds a control token's text, without its partition's quadratic time."""
    table = specials(llm)
    spans: tuple = ()
    if isinstance(text, ChatText):
        controls = [special.text for special in table if special.control]
        require_spans(text, controls, "the conversation")
        if may_hold(text, controls):
            spans = text.content_spans
    ids: list[int] = []
    for piece, _ in split_controls(text, spans, table):
        if isinstance(piece, Special):
            ids.append(llm._edgeft_special_ids[piece.text])
        else:
            ids += llm.tokenize(piece.encode("utf-8"), add_bos=False, special=False)
        if limit is not None and len(ids) > limit:  # a client's 30,000-turn body stops here, not after seconds
            raise EdgeftError(f"the prompt is over {limit} tokens, which does not fit the context of {limit + 1} "
                              "tokens (with room for the answer); shorten the conversation or raise --ctx")
    return ids


def text_tokens(llm, text: str, *, limit: int | None = None) -> list[int]:
    """A raw completion prompt's ids, as llama-cpp-python's create_completion makes them (special tokens parsed,
    BOS in front when the vocabulary adds one), in linear time; EdgeftError past `limit` tokens."""
    import llama_cpp

    bos = llm.token_bos()
    adds = llama_cpp.llama_vocab_get_add_bos(_vocab(llm)) and bos >= 0
    return ([bos] if adds else []) + _tokenize(llm, text, None if limit is None else limit - adds)


def prompt_tokens(llm, text: str, *, limit: int | None = None) -> list[int]:
    """Tokenize rendered chat text: control tokens where the template wrote them (never from message text, see
    `_tokenize`), BOS added only when the model wants one and the template did not already write it first (Llama-3
    templates start with {{ bos_token }}). The rule is `convert.vocab.special.bos_first`, which training applies to
    the same text too. `limit`: EdgeftError as soon as the prompt has more tokens (a server's context)."""
    import llama_cpp

    from convert.vocab.special import bos_first

    bos = llm.token_bos()
    bos = bos if llama_cpp.llama_vocab_get_add_bos(_vocab(llm)) and bos >= 0 else None
    tokens = bos_first(_tokenize(llm, text, limit), bos)
    if limit is not None and len(tokens) > limit:
        raise EdgeftError(f"the prompt is {len(tokens)} tokens, which does not fit the context of {limit + 1} "
                          "tokens (with room for the answer); shorten the conversation or raise --ctx")
    return tokens
