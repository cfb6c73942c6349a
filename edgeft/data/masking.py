"""The assistant-only label mask: messages + tokenizer + chat template -> input_ids and labels.

Most chat templates have no `{% generation %}` markers, so the trained spans are found from the text itself:

1. render the whole conversation;
2. for each assistant message, render the conversation before it (with the generation prompt) and up to it: the
   text between the two is that assistant turn; its content (or the content as the template trimmed it) is found
   inside it, and whatever non-blank text the template writes after the content in that turn is the end-of-turn
   marker (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, `<|end|>`);
3. tokenize the rendered text with offsets and label every token that overlaps an assistant content span or the
   end-of-turn marker right after it. Everything else is -100;
4. put in front the BOS llama.cpp will put there (`convert.vocab.special.bos_first`: add_bos_token, and the
   template did not write it first), labelled -100, so training feeds the ids inference feeds.

A mask that comes out empty is an error naming the example: silently training on nothing (or on the user turn)
is the classic way a fine-tune fails without anyone noticing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

# The one loader of a folder's HF tokenizer (offline, fast, split as llama.cpp splits), shared with runtime/.
from runtime.hf_tokenizer import load_hf_tokenizer as load_tokenizer
from edgeft.data.templates import TemplateRenderError, render_chat, special_tokens_of, template_for
from convert.common.errors import EdgeftError

IGNORE_INDEX = -100

# End-of-turn strings of the common template families, used only when a template writes the marker outside the
# assistant's own turn (e.g. at the start of the next one).
KNOWN_END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>", "<|endoftext|>", "<|eom_id|>")


@dataclass(frozen=True)
class TrainedSpan:
    """Character range [start, end) of the rendered text that is trained: content plus end-of-turn marker."""

    start: int
    content_end: int  # end of the assistant content; [content_end, end) is the end-of-turn marker
    end: int


def _describe(messages: Sequence[Mapping[str, Any]]) -> str:
    first_user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    preview = " ".join(str(first_user).split())[:40]
    return f"example starting {preview!r}"


def assistant_spans(
    messages: Sequence[Mapping[str, Any]],
    template: str,
    special_tokens: Mapping[str, str] | None = None,
    *,
    where: str | None = None,
    tools: list | None = None,
) -> tuple[str, list[TrainedSpan]]:
    """Render `messages` (with the function definitions `tools`) and find each assistant turn's trained character
    span in the rendered text. A turn that calls tools is trained whole: the call is the template's rendering of
    `tool_calls`, not the content."""
    where = where or _describe(messages)

    def render(msgs, add_generation_prompt=False) -> str:
        try:
            return render_chat(template, msgs, add_generation_prompt=add_generation_prompt, special_tokens=special_tokens,
                               tools=tools)
        except TemplateRenderError as exc:
            raise EdgeftError(f"{where}: {exc}") from exc

    full = render(messages)
    spans: list[TrainedSpan] = []
    cursor = 0
    for index, message in enumerate(messages):
        content = message.get("content", "")
        if message.get("role") in ("user", "tool"):
            # Step over user turns so the fallback search can never land inside a user's words. (Not system
            # turns: templates move them, e.g. Mistral v0.3 writes the system prompt into the *last* user turn.)
            start, end = _find_content(full, content, cursor, len(full))
            cursor = end if start >= 0 else cursor
        if message.get("role") != "assistant":
            continue
        bounds = _turn_bounds(render, messages, index, full, cursor)
        turn_start, turn_end = bounds if bounds else (cursor, len(full))
        if message.get("tool_calls"):
            spans.append(_tool_call_span(full, bounds, special_tokens, where, index))
            cursor = spans[-1].end
            continue
        start, content_end = _find_content(full, content, turn_start, turn_end)
        if start < 0:
            raise EdgeftError(
                f"{where}: assistant turn {index} does not appear in the rendered chat (the template rewrites it); "
                "use a template that renders the content as is"
            )
        end = _end_of_turn(full, content_end, turn_end if bounds else None, special_tokens)
        spans.append(TrainedSpan(start, content_end, end))
        cursor = end
    if not spans:
        raise EdgeftError(f"{where}: no assistant turn, so nothing would be trained; add the answer to train on")
    return full, spans


def _turn_bounds(render, messages, index: int, full: str, cursor: int) -> tuple[int, int] | None:
    """[start, end) of assistant turn `index` in `full`, from incremental prefix renders; None if they disagree."""
    try:
        before = render(messages[:index], add_generation_prompt=True)
        through = render(messages[: index + 1])
    except EdgeftError:
        return None  # some templates refuse a prefix (e.g. one that must end with an assistant turn)
    if full.startswith(through) and through.startswith(before) and len(before) >= cursor:
        return len(before), len(through)
    # The template renders earlier turns differently once later ones exist: the caller searches instead.
    return None


def _tool_call_span(full: str, bounds, special_tokens, where: str, index: int) -> TrainedSpan:
    """The whole of a turn that calls tools, up to and with its end-of-turn marker: everything the model writes
    after the generation prompt (its text, then the calls as the template renders them)."""
    if bounds is None:
        raise EdgeftError(f"{where}: assistant turn {index} calls tools, and the chat template renders the "
                          "conversation before it differently once it goes on, so the call cannot be located; use a "
                          "template whose turns render the same in every prefix")
    turn_start, turn_end = bounds
    body = full[turn_start:turn_end].rstrip()
    for token in _end_strings(special_tokens):
        if body.endswith(token):
            return TrainedSpan(turn_start, turn_start + len(body) - len(token), turn_start + len(body))
    return TrainedSpan(turn_start, turn_start + len(body), turn_start + len(body))


def _find_content(full: str, content: str, lo: int, hi: int) -> tuple[int, int]:
    # Templates often trim the content (Llama-3: `| trim`, Mistral: `.strip()`), so try it as is, then trimmed.
    for candidate in (content, content.strip()):
        if candidate:
            position = full.find(candidate, lo, hi)
            if position >= 0:
                return position, position + len(candidate)
    return -1, -1


def _end_of_turn(full: str, content_end: int, turn_end: int | None, special_tokens: Mapping[str, str] | None) -> int:
    """End of the marker the template writes after the content: it is what teaches the model to stop.

    `turn_end` is where the prefix renders say this turn ends, or None when they could not tell.
    """
    if turn_end is not None and full[content_end:turn_end].strip():
        tail = full[content_end:turn_end]
        stripped = tail.lstrip()
        # A known marker ends the trained span even if the template writes more in this turn (Phi-3 appends
        # eos after the last turn: "<|end|>\n<|endoftext|>"; only the first marker is the model's to produce).
        for token in _end_strings(special_tokens):
            if stripped.startswith(token):
                return content_end + (len(tail) - len(stripped)) + len(token)
        # Otherwise the model must produce everything up to the last visible character of its turn (a trailing
        # newline before the next header is the template's, not the model's).
        return content_end + len(tail.rstrip())
    # Nothing visible inside the turn (the template writes the marker later) or no turn bounds: accept only a
    # known end-of-turn string right after the content, never an unbounded stretch that could reach a user turn.
    rest = full[content_end:]
    stripped = rest.lstrip()
    for token in _end_strings(special_tokens):
        if stripped.startswith(token):
            return content_end + (len(rest) - len(stripped)) + len(token)
    return content_end


def _end_strings(special_tokens: Mapping[str, str] | None) -> list[str]:
    eos = (special_tokens or {}).get("eos_token")
    return ([eos] if eos else []) + [t for t in KNOWN_END_OF_TURN if t != eos]


def label_tokens(offsets: Sequence[tuple[int, int]], spans: Sequence[TrainedSpan]) -> list[bool]:
    """Which tokens are trained: those whose character range overlaps a trained span (spans sorted, disjoint)."""
    trained = []
    span_index = 0
    for start, end in offsets:
        while span_index < len(spans) and spans[span_index].end <= start:
            span_index += 1
        if span_index == len(spans):
            trained.append(False)
        elif end > start:
            trained.append(start < spans[span_index].end and end > spans[span_index].start)
        else:  # a zero-width token (e.g. an inserted "▁") belongs to the text right after it
            trained.append(spans[span_index].start <= start)
    return trained


@dataclass
class MaskedExample:
    """A rendered conversation with its tokens, their character offsets and the labels."""

    text: str
    input_ids: list[int]
    labels: list[int]
    offsets: list[tuple[int, int]]
    spans: list[TrainedSpan]

    def trained_ranges(self) -> list[tuple[int, int]]:
        """Character ranges of `text` covered by trained tokens, merged into contiguous runs."""
        runs: list[list[int]] = []
        for (start, end), label in zip(self.offsets, self.labels):
            if label == IGNORE_INDEX or end <= start:
                continue
            if runs and runs[-1][1] >= start:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end])
        return [(start, end) for start, end in runs]


def mask_example(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    chat_template: str | None = None,
    *,
    where: str | None = None,
    tools: list | None = None,
) -> MaskedExample:
    """Render, tokenize with offsets and label one conversation (no truncation); see `build_example`."""
    if chat_template is None:
        chat_template = template_for(tokenizer)  # a folder: the one rule; a loaded tokenizer: what it holds
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    where = where or _describe(messages)
    template = chat_template
    text, spans = assistant_spans(messages, template, special_tokens_of(tokenizer), where=where, tools=tools)
    # Labels come from character offsets, which only fast (tokenizers-backed) tokenizers report.
    if not getattr(tokenizer, "is_fast", True):
        raise EdgeftError(f"{where}: the tokenizer gives no character offsets; use a fast tokenizer")
    from runtime.hf_tokenizer import chat_encoding, llama_cpp_bos_id
    from convert.vocab.special import bos_first

    # The ids llama.cpp is fed for this text: control tokens from the template's markup only, never from a
    # message's text (chat_encoding), then the BOS the GGUF adds (add_bos_token) when the template did not write it
    # first. The BOS is prompt, never trained, and has no characters of the text.
    try:
        encoded_ids, offsets = chat_encoding(tokenizer, text)
    except EdgeftError as exc:
        raise EdgeftError(f"{where}: {str(exc).removeprefix('the conversation: ')}") from exc
    trained = label_tokens(offsets, spans)
    bos = llama_cpp_bos_id(tokenizer)
    input_ids = bos_first(encoded_ids, bos)
    if len(input_ids) > len(offsets):
        if bos in encoded_ids:
            raise EdgeftError(
                f"{where}: double BOS: llama.cpp puts BOS first (the tokenizer adds it, add_bos_token) and the "
                f"template writes another at token {encoded_ids.index(bos) + 1}; write "
                "{{ bos_token }} first in the template, nothing before it"
            )
        offsets, trained = [(0, 0)] + offsets, [False] + trained
    if not any(trained):
        raise EdgeftError(f"{where}: the assistant-only label mask is empty; check the chat template and content")
    labels = [token if keep else IGNORE_INDEX for token, keep in zip(input_ids, trained)]
    return MaskedExample(text, input_ids, labels, offsets, spans)


def build_example(
    messages: Sequence[Mapping[str, Any]],
    tokenizer: Any,
    chat_template: str | None = None,
    max_len: int | None = None,
    *,
    where: str | None = None,
    tools: list | None = None,
) -> dict[str, list[int]]:
    """`{"input_ids", "labels"}` for one conversation, labels -100 except assistant content + end-of-turn tokens.

    `tokenizer` is a HF fast tokenizer or a model folder; `chat_template` defaults to the tokenizer's.
    `max_len` truncates from the right. `where` (e.g. "train.jsonl:12") names the example in errors.
    Raises EdgeftError when nothing would be trained (no assistant tokens, or all of them past `max_len`).
    """
    where = where or _describe(messages)
    example = mask_example(messages, tokenizer, chat_template, where=where, tools=tools)
    input_ids, labels = example.input_ids, example.labels
    if max_len is not None and len(input_ids) > max_len:
        input_ids, labels = input_ids[:max_len], labels[:max_len]
        if all(label == IGNORE_INDEX for label in labels):
            raise EdgeftError(
                f"{where}: {len(example.input_ids)} tokens, every assistant token lies past max_len={max_len}; "
                "raise max_len or shorten the prompt"
            )
    return {"input_ids": input_ids, "labels": labels}
