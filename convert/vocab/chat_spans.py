"""Which characters of a rendered chat came from the messages, so that only the template's own markup yields
control tokens.

Tokenizing a rendered chat with special tokens parsed turns `<|im_end|>` typed by a client into the real control
token: the client forges turns. The rule here: a control token is one whose text lies wholly in the template's
markup; text that came from a message (its content, a tool call, a tool definition) is tokenized as text.

`render_with_spans` finds that text by rendering twice: as it is, and with every string of the messages wrapped in
two marker characters found nowhere in the input. When the marked rendering, markers removed, is the same text, the
markers give the exact spans. (Whitespace at a string's ends stays outside its markers, so a template's `| trim`
renders the same.) A template that inspects the text it renders (Qwen3 splitting `</think>` off an answer) may not
reproduce it; then the spans are unknown and `require_spans` refuses a message holding a control token's text.

`split_controls` then cuts the text at the control tokens of the markup with llama.cpp's own partition rule
(`llama_vocab::impl::tokenizer_st_partition`: specials longest first, each claiming every occurrence left in the
raw fragments, lstrip/rstrip eating the whitespace beside it). The pieces between are tokenized as text (llama.cpp's
parse_special=false, Hugging Face's encode_special_tokens), which still matches non-special added tokens as both
do. For a conversation whose messages hold no control token's text nothing changes: both sides tokenize the whole
text as before (`forged` is false), so the ids a fine-tune was trained on stay the ids it is served.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Sequence

from convert.common.errors import EdgeftError

# Fields whose strings a template compares or picks a branch on rather than renders: wrapping them would change
# the branch, so they are checked instead (a control token's text there is refused, `require_spans`).
STRUCTURAL_KEYS = ("role", "type")
WHITESPACE = " \t\n\v\f\r"  # C's isspace, what llama.cpp strips beside an lstrip/rstrip token


class ChatText(str):
    """Rendered chat text that knows the strings it was rendered from (`sources`) and which character spans came
    from them (`content_spans`, worked out on first use: a second, marked rendering; None when the template's
    rendering could not be marked)."""

    sources: tuple[str, ...]

    def __new__(cls, text: str, spans, sources=()):
        self = super().__new__(cls, text)
        self._spans = spans  # a tuple, None, or a function that returns one of them
        self.sources = tuple(sources)
        return self

    @property
    def content_spans(self) -> tuple[tuple[int, int], ...] | None:
        if callable(self._spans):
            spans = self._spans()
            self._spans = None if spans is None else tuple(spans)
        return self._spans

    def __reduce__(self):  # the spans travel worked out: the function that finds them holds the template's renderer
        return ChatText, (str(self), self.content_spans, self.sources)


@dataclass(frozen=True)
class Special:
    text: str
    control: bool  # never produced by message text (CONTROL/UNKNOWN in the GGUF the converter writes)
    lstrip: bool = False
    rstrip: bool = False
    # Split out as its own token even inside message text (an added token that is not a control token, which
    # llama.cpp always matches); False when the tokenizer that gets the text pieces matches it by itself.
    emit: bool = False


def _strings(value: Any, key: str | None = None) -> Iterable[tuple[str, bool]]:
    """(string, wrapped) for every string in messages/tools: wrapped unless it sits under a structural key or is
    a dict key."""
    if isinstance(value, str):
        yield value, key not in STRUCTURAL_KEYS
    elif isinstance(value, dict):
        for name, item in value.items():
            yield str(name), False
            yield from _strings(item, name)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item, key)


def _wrap(value: Any, marks: tuple[str, str], key: str | None = None) -> Any:
    if isinstance(value, str):
        core = value.strip()
        if not core or key in STRUCTURAL_KEYS:
            return value
        start = len(value) - len(value.lstrip())
        return value[:start] + marks[0] + core + marks[1] + value[start + len(core):]
    if isinstance(value, dict):
        return {name: _wrap(item, marks, name) for name, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_wrap(item, marks, key) for item in value]
    return value


def _marks(*texts: str) -> tuple[str, str]:
    """Two private-use characters that occur in none of `texts`."""
    seen = set().union(*map(set, texts))
    free = (chr(c) for c in range(0xE000, 0xF900) if chr(c) not in seen)
    return next(free), next(free)


def _spans(marked: str, text: str, marks: tuple[str, str]) -> list[tuple[int, int]] | None:
    spans, plain, start = [], [], None
    for char in marked:
        if char == marks[0]:
            if start is not None:
                return None
            start = len(plain)
        elif char == marks[1]:
            if start is None:
                return None
            spans.append((start, len(plain)))
            start = None
        else:
            plain.append(char)
    if start is not None or "".join(plain) != text:
        return None
    return [span for span in spans if span[1] > span[0]]


def render_with_spans(render: Callable[[list, list | None], str], messages: Sequence[dict],
                      tools: list | None = None) -> ChatText:
    """`render(messages, tools)` as ChatText: the same text, with the spans that came from the messages."""
    text = render(list(messages), tools)
    missing = unrendered(messages, tools, text)
    if missing is not None:
        raise EdgeftError(f"the chat template does not render {missing}, so the model would never see it; use a "
                          "model whose template supports tool calls (Qwen2.5's, Llama 3.1's, Mistral's) or leave "
                          "the tool calls out of the conversation")
    sources = tuple(s for s, wrapped in _strings([list(messages), tools]) if wrapped)

    def mark():
        marks = _marks(text, *(s for s, _ in _strings([list(messages), tools])))
        try:
            marked = render(_wrap(list(messages), marks), _wrap(tools, marks))
        except Exception:  # noqa: BLE001 - a template that branches on the text may refuse it marked: unknown
            return None
        return _spans(marked, text, marks)

    return ChatText(text, mark, sources)


def unrendered(messages: Sequence[dict], tools: list | None, text: str) -> str | None:
    """The first tool call, tool result or tool definition that `text` does not contain: what a template without
    tool support drops without a word."""
    for index, message in enumerate(messages):
        for call in message.get("tool_calls") or ():
            name = call.get("function", {}).get("name", "")
            if name.strip() and name.strip() not in text:
                return f"the tool call {name!r} of message {index}"
        content = message.get("content")
        if message.get("role") == "tool" and isinstance(content, str) and content.strip() not in text:
            return f"the tool result in message {index}"
    for tool in tools or ():
        name = tool.get("function", {}).get("name", "")
        if name.strip() and name.strip() not in text:
            return f"the tool definition {name!r}"
    return None


@lru_cache(maxsize=16)
def _control_parts(controls: tuple[str, ...]):
    """A pattern finding any of `controls`, their proper prefixes and suffixes, and the longest one's length."""
    pattern = re.compile("|".join(re.escape(c) for c in sorted(controls, key=len, reverse=True)))
    heads = {c[:k] for c in controls for k in range(1, len(c))}
    tails = {c[k:] for c in controls for k in range(1, len(c))}
    return pattern, heads, tails, max(map(len, controls))


def may_hold(text: ChatText, controls: Sequence[str]) -> bool:
    """Whether a message string of `text` could take part in a control token's text: it holds one, ends with the
    start of one, begins with the end of one, or lies inside one. False for nearly every conversation, which is
    then tokenized whole without the marked rendering."""
    controls = tuple(c for c in controls if c)
    if not controls:
        return False
    pattern, heads, tails, longest = _control_parts(controls)
    for source in text.sources:
        core = source.strip()
        reach = range(1, min(len(core), longest))
        if pattern.search(core) or any(core[-k:] in heads for k in reach) or any(core[:k] in tails for k in reach) \
                or (len(core) < longest and any(core in c for c in controls)):
            return True
    return False


def forged(text: ChatText, controls: Sequence[str]) -> str | None:
    """The first control token's text that the messages put into `text` (None: every control token in it is the
    template's). With unknown spans, any message string holding one counts (`require_spans` refuses those)."""
    if not may_hold(text, controls):
        return None
    for control in controls:
        if not control:
            continue
        if text.content_spans is None:
            if any(control in source for source in text.sources):
                return control
            continue
        spans = text.content_spans
        starts = [lo for lo, _ in spans]
        at = text.find(control)
        while at >= 0:
            if _covering(starts, spans, at, at + len(control)):
                return control
            at = text.find(control, at + 1)
    return None


def require_spans(text: ChatText, controls: Iterable[str], where: str) -> None:
    """Refuse what cannot be tokenized safely: a message holding a control token's text when the template's
    rendering could not be marked, so the token's place (markup or message) is unknown."""
    if not may_hold(text, controls) or text.content_spans is not None:
        return
    control = forged(text, controls)
    if control is not None:
        raise EdgeftError(f"{where}: a message holds the control token {control!r} and the chat template rewrites "
                          "message text, so edgeft cannot keep it as text; remove it from the message")


def _covering(starts: Sequence[int], intervals: Sequence[tuple[int, int]], at: int, end: int) -> bool:
    """Whether [at, end) overlaps one of the sorted, disjoint `intervals` (`starts`: their starts)."""
    index = bisect_right(starts, end - 1) - 1
    return index >= 0 and intervals[index][1] > at


def _claim(text: str, special: Special, blocks: list, spans: Sequence[tuple[int, int]], span_starts) -> list:
    """Every occurrence of `special` that lies wholly in raw text (outside `blocks`, the claimed tokens and the
    whitespace they ate) and, for a control token, outside the message spans: [(left, at, end, right)], the token
    at [at, end) having eaten [left, at) and [end, right). llama.cpp's per-fragment loop, over the whole text."""
    starts = [lo for lo, _ in blocks]
    found, search, previous = [], 0, 0
    strip = special.control or special.emit  # a token left in the text is stripped by the tokenizer itself
    while (at := text.find(special.text, search)) >= 0:
        end = at + len(special.text)
        index = bisect_right(starts, at) - 1
        low = blocks[index][1] if index >= 0 else 0
        high = blocks[index + 1][0] if index + 1 < len(blocks) else len(text)
        if low > at or end > high or (special.control and _covering(span_starts, spans, at, end)):
            search = at + 1  # across a claimed token, or the message's text: not this token here
            continue
        low, left, right = max(low, previous), at, end
        while strip and special.lstrip and left > low and text[left - 1] in WHITESPACE:
            left -= 1
        while strip and special.rstrip and right < high and text[right] in WHITESPACE:
            right += 1
        found.append((left, at, end, right))
        previous = search = right
    return found


def split_controls(text: str, spans: Sequence[tuple[int, int]],
                   specials: Sequence[Special]) -> list[tuple[str | Special, list[tuple[int, int]]]]:
    """`text` cut at the control tokens of its markup (outside `spans`), in llama.cpp's partition order (specials
    longest first, each claiming its occurrences in what is left): a list of (text piece, the ranges of `text` it
    joins) to tokenize as text and (Special, its range) for a token. Linear in the number of tokens claimed, where
    llama.cpp's own partition is quadratic in it (a prompt of 10,000 short turns: about a minute)."""
    spans = sorted(spans)
    span_starts = [lo for lo, _ in spans]
    blocks: list[tuple[int, int]] = []
    tokens: dict[int, tuple[int, Special]] = {}
    for special in sorted(specials, key=lambda s: len(s.text.encode("utf-8")), reverse=True):
        if not special.text:
            continue
        found = _claim(text, special, blocks, spans, span_starts)
        if found:
            blocks = sorted(blocks + [(left, right) for left, _, _, right in found])
            tokens.update({left: (at, end, special) for left, at, end, _ in found})
    pieces: list[tuple[str | Special, list[tuple[int, int]]]] = []

    def add_text(lo: int, hi: int) -> None:
        if hi <= lo:
            return
        if pieces and isinstance(pieces[-1][0], str):
            pieces[-1] = (pieces[-1][0] + text[lo:hi], pieces[-1][1] + [(lo, hi)])
        else:
            pieces.append((text[lo:hi], [(lo, hi)]))

    cursor = 0
    for left, right in blocks:
        add_text(cursor, left)
        at, end, special = tokens[left]
        if special.control or special.emit:
            pieces.append((special, [(at, end)]))
        else:
            add_text(at, end)
        cursor = right
    add_text(cursor, len(text))
    return pieces


def original_offset(ranges: Sequence[tuple[int, int]], index: int) -> int:
    """Where character `index` of a text piece (the concatenation of `ranges` of the text) lies in the text."""
    for lo, hi in ranges:
        if index < hi - lo:
            return lo + index
        index -= hi - lo
    return ranges[-1][1] + index if ranges else index
