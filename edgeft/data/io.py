"""Read conversation JSONL: one `{"messages": [{"role", "content"}...]}` per line.

Two readers over one validator: `scan_jsonl` never stops at a bad line (data check reports every problem),
`read_conversations` stops at the first one with `FILE:LINE: what` (training must not start on bad data).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from edgeft.errors import EdgeftError

ROLES = ("system", "user", "assistant")


@dataclass
class Record:
    """One non-blank line of a JSONL file: what it parsed to, or why it is unusable."""

    line: int  # 1-based line number in the file
    raw: str  # the line as read (without its newline), written back verbatim by --fix
    messages: list[dict] | None  # None when the line is not a usable conversation
    problems: list[str] = field(default_factory=list)
    data: dict | None = None  # the whole parsed object (extra keys kept)


def validate_messages(obj: Any) -> list[str]:
    """Every schema/order problem of one parsed line, as short phrases (empty list: the conversation is fine)."""
    if not isinstance(obj, dict) or "messages" not in obj:
        return ['missing "messages" (expected {"messages": [{"role": ..., "content": ...}, ...]})']
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return ['"messages" must be a non-empty list of {"role", "content"} objects']
    problems: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            problems.append(f"message {i} is not an object")
            continue
        role = message.get("role")
        if role not in ROLES:
            problems.append(f"message {i}: unknown role {role!r} (expected system, user or assistant)")
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(f"message {i} ({role}): content must be a string")
        elif not content.strip():
            problems.append(f"message {i} ({role}): empty content")
    if problems:
        return problems
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return ["no assistant turn (nothing to train on)"]
    if roles[-1] != "assistant":
        problems.append(f"does not end with an assistant turn (ends with {roles[-1]})")
    problems.extend(_order_problems(roles))
    return problems


def _order_problems(roles: list[str]) -> list[str]:
    # Accepted shape: optional system first, then user/assistant strictly alternating from a user turn.
    # Templates such as Mistral's and Gemma's raise on anything else, and a model trained on other orders
    # sees a distribution it will never be served.
    body = roles[1:] if roles[0] == "system" else roles
    for i, role in enumerate(body):
        index = i + (len(roles) - len(body))
        if role == "system":
            return [f"roles out of order: system message at position {index} (only the first may be system)"]
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return [f"roles out of order: {role} at position {index} where {expected} was expected"]
    return []


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        # utf-8-sig: a byte-order mark (Windows editors add one) must not make line 1 "invalid JSON".
        with open(path, encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\n").rstrip("\r")
    except FileNotFoundError:
        raise EdgeftError(f"{path}: no such file; pass a JSONL file of conversations") from None
    except UnicodeDecodeError as exc:
        raise EdgeftError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode it as UTF-8") from None
    except OSError as exc:
        raise EdgeftError(f"{path}: cannot read ({exc.strerror})") from None


def parse_line(number: int, raw: str) -> Record:
    """Parse and validate one JSONL line."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return Record(number, raw, None, [f"invalid JSON ({exc.msg} at column {exc.colno})"])
    problems = validate_messages(obj)
    messages = obj["messages"] if not problems else None
    return Record(number, raw, messages, problems, obj if isinstance(obj, dict) else None)


def scan_jsonl(path: str | Path) -> list[Record]:
    """Every non-blank line of `path` as a Record; bad lines carry their problems instead of raising."""
    return [parse_line(number, raw) for number, raw in _iter_lines(Path(path)) if raw.strip()]


def read_conversations(path: str | Path) -> list[dict]:
    """The conversations of a JSONL file, validated; the first bad line raises `FILE:LINE: what`."""
    path = Path(path)
    conversations = []
    for record in scan_jsonl(path):
        if record.problems:
            raise EdgeftError(
                f"{path}:{record.line}: {record.problems[0]}; run `edgeft data check {path}` for the full list"
            )
        conversations.append(record.data)
    if not conversations:
        raise EdgeftError(f"{path}: no conversations in the file; expected one JSON object per line")
    return conversations


def write_jsonl_lines(path: str | Path, lines: Iterable[str]) -> Path:
    """Write raw JSONL lines atomically (a killed run leaves no half file)."""
    from edgeft.fsutil import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
    return path
