"""Read conversation JSONL: one `{"messages": [{"role", "content"}...]}` per line.

Two readers over one line parser: `scan_jsonl` never stops at a bad line (data check reports every problem),
`read_jsonl` stops at the first one with `FILE:LINE: what` (training and eval must not start on bad data);
`read_conversations` is the training side's, and runtime.examples passes its own, looser parser for eval files.
Also the one YAML reader (`read_yaml`, `parse_yaml`) for recipes and model cards: bad YAML is one line with the
file and line. A shared leaf: `convert/` and `runtime/` import it, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from convert.common.messages import ROLES, MessageError, normalize_message, normalize_tools  # noqa: F401 (ROLES)
from convert.common.errors import EdgeftError


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
    if isinstance(obj, dict) and "messages" not in obj and ("chosen" in obj or "rejected" in obj):
        return ["a preference pair (prompt/chosen/rejected), not a conversation; train it with --objective dpo "
                "or orpo, or write conversations as {\"messages\": [...]}"]
    if not isinstance(obj, dict) or "messages" not in obj:
        return ['missing "messages" (expected {"messages": [{"role": ..., "content": ...}, ...]})']
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        return ['"messages" must be a non-empty list of {"role", "content"} objects']
    problems: list[str] = []
    try:
        normalize_tools(obj.get("tools"))
    except MessageError as exc:
        problems.append(str(exc))
    for i, message in enumerate(messages):
        try:
            message = normalize_message(message, i)
        except MessageError as exc:
            problems.append(str(exc))
            continue
        role, content = message["role"], message["content"]
        if not content.strip() and not message.get("tool_calls"):
            problems.append(f"message {i} ({role}): empty content")
        elif (surrogate := lone_surrogate(content)) is not None:
            problems.append(f"message {i} ({role}): content holds a lone surrogate {surrogate}, which is not text "
                            "(a UTF-16 escape cut in half); fix or drop the example")
    if problems:
        return problems
    messages = normalized_messages(messages)
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        return ["no assistant turn (nothing to train on)"]
    if roles[-1] != "assistant":
        problems.append(f"does not end with an assistant turn (ends with {roles[-1]})")
    problems.extend(_order_problems(messages))
    return problems


def normalized_messages(messages: list) -> list[dict]:
    """The messages of a line that passed `validate_messages`, in the one schema (roles, tool calls) every stage
    renders (`convert.common.messages`)."""
    return [normalize_message(message, i) for i, message in enumerate(messages)]


def _order_problems(messages: list[dict]) -> list[str]:
    # Accepted shape: optional system first, then user/assistant strictly alternating from a user turn; an
    # assistant turn that calls tools is followed by one or more tool results, then the assistant again.
    # Templates such as Mistral's and Gemma's raise on anything else, and a model trained on other orders
    # sees a distribution it will never be served.
    roles = [m["role"] for m in messages]
    start = 1 if roles[0] == "system" else 0
    expected = ("user",)
    for index in range(start, len(roles)):
        role = roles[index]
        if role == "system":
            return [f"roles out of order: system message at position {index} (only the first may be system)"]
        if role not in expected:
            return [f"roles out of order: {role} at position {index} where {' or '.join(expected)} was expected"]
        if role == "user":
            expected = ("assistant",)
        elif role == "tool":
            expected = ("tool", "assistant")
        else:
            expected = ("tool",) if messages[index].get("tool_calls") else ("user",)
    return []


def lone_surrogate(text: str) -> str | None:
    """JSON's \\ud800-style escapes can decode to half a UTF-16 pair: a str that no tokenizer or file takes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"\\u{ord(text[exc.start]):04x} at character {exc.start + 1}"
    return None


# What an input path that is not a regular file is, for the one line that refuses it. A pipe or a device reads once,
# or never ends (/dev/zero, /dev/urandom), and commands read their inputs more than once and to the end.
FILE_KINDS = ((stat.S_ISDIR, "is a folder, not a file"),
              (stat.S_ISFIFO, "is a pipe, not a regular file (a pipe reads only once: save what it gives to a file)"),
              (stat.S_ISCHR, "is a device, not a regular file"), (stat.S_ISBLK, "is a device, not a regular file"),
              (stat.S_ISSOCK, "is a socket, not a regular file"))


def input_file_problem(path: str | Path) -> str | None:
    """Why `path` cannot be read as an input file (missing, a folder, a pipe, a device...), or None: the one rule
    every reader of a user's file applies before opening it."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "no such file"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    return next((why for is_kind, why in FILE_KINDS if is_kind(mode)), "is not a regular file")


def check_input_file(path: str | Path, advice: str, *, missing: str = "no such file") -> Path:
    """`path` when it is a regular file; otherwise one line, "PATH: is a pipe, not a regular file...; ADVICE"
    (`missing`: the words for a path that does not exist, "no such GGUF file")."""
    problem = input_file_problem(path)
    if problem is not None:
        raise EdgeftError(f"{path}: {missing if problem == 'no such file' else problem}; {advice}")
    return Path(path)


def iter_lines(path: str | Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text without its newline, None) per line, or (number, None, why) for a line that is not
    UTF-8, placed by line, column and byte offset in the file (decoding line by line, so the place is exact)."""
    path = check_input_file(path, "pass a JSONL file of conversations")
    try:
        with open(path, "rb") as handle:
            offset = 0
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    column = len(raw[:exc.start].decode("utf-8", errors="replace")) + 1
                    yield number, None, (f"not UTF-8: byte 0x{raw[exc.start]:02x} at column {column} (byte "
                                         f"{offset + exc.start} of the file); re-encode the file as UTF-8")
                else:
                    # A byte-order mark (Windows editors add one) must not make line 1 "invalid JSON".
                    yield number, (text.removeprefix("\ufeff") if number == 1 else text).rstrip("\n").rstrip("\r"), None
                offset += len(raw)
    except OSError as exc:
        raise EdgeftError(f"{path}: cannot read ({exc.strerror})") from None


def parse_json_line(raw: str):
    """json.loads for one line, with every way a line can fail as (None, why): bad JSON, nesting deeper than the
    parser's recursion limit, an integer longer than Python converts."""
    try:
        return json.loads(raw), None
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg} at column {exc.colno})"
    except RecursionError:
        return None, "invalid JSON for us (nested too deeply to parse); flatten the line"
    except ValueError as exc:  # e.g. an integer of more than 4300 digits; the part after ";" is Python's advice
        return None, f"invalid JSON for us ({str(exc).split(';')[0]})"


def read_json_lines(path: str | Path, *, advice: str = "") -> list[tuple[int, object]]:
    """(line number, parsed JSON) for every non-blank line of a JSONL file whose lines are not conversations
    (passages, multiple-choice questions); the first line that is not UTF-8 or not JSON raises
    `FILE:LINE: what{advice}`. The caller checks each value's shape."""
    values = []
    for number, line, problem in iter_lines(path):
        if problem is None and not line.strip():
            continue
        value, problem = (None, problem) if problem is not None else parse_json_line(line)
        if problem is not None:
            raise EdgeftError(f"{path}:{number}: {problem}{advice}")
        values.append((number, value))
    return values


def parse_line(number: int, raw: str) -> Record:
    """Parse and validate one JSONL line."""
    obj, problem = parse_json_line(raw)
    if problem is not None:
        return Record(number, raw, None, [problem])
    problems = validate_messages(obj)
    messages = normalized_messages(obj["messages"]) if not problems else None
    return Record(number, raw, messages, problems, obj if isinstance(obj, dict) else None)


def _records(path: str | Path, parse: Callable[[int, str], Record]) -> Iterator[Record]:
    """A Record per non-blank line: `parse(number, text)`, or the line's UTF-8 problem."""
    for number, raw, problem in iter_lines(path):
        if problem is not None:
            yield Record(number, "", None, [problem])
        elif raw.strip():
            yield parse(number, raw)


def _empty(path: str | Path) -> EdgeftError:
    return EdgeftError(f"{path}: empty, no conversations in it; expected one {{\"messages\": [...]}} per line")


def scan_jsonl(path: str | Path, parse: Callable[[int, str], Record] = parse_line) -> list[Record]:
    """Every non-blank line of `path` as a Record; bad lines carry their problems instead of raising. A file with
    no line at all is an error: "0 examples, 0 errors" would read as a pass."""
    records = list(_records(path, parse))
    if not records:
        raise _empty(path)
    return records


def read_jsonl(path: str | Path, parse: Callable[[int, str], Record] = parse_line, *,
               advice: str = "") -> list[Record]:
    """The Records of a JSONL file, read up to the first bad line, which raises `FILE:LINE: what{advice}`.
    `parse` turns one line into a Record (the default: a training conversation, checked in full)."""
    records = []
    for record in _records(path, parse):
        if record.problems:
            raise EdgeftError(f"{path}:{record.line}: {record.problems[0]}{advice}")
        records.append(record)
    return records


def read_conversations(path: str | Path) -> list[dict]:
    """The conversations of a JSONL file, validated; the first bad line raises `FILE:LINE: what`."""
    records = read_jsonl(path, advice=f"; run `edgeft data check {path}` for the full list")
    if not records:
        raise _empty(path)
    return [{**record.data, "messages": record.messages} for record in records]


def write_jsonl_lines(path: str | Path, lines: Iterable[str]) -> Path:
    """Write raw JSONL lines atomically (a killed run leaves no half file)."""
    from convert.common.fsutil import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line + "\n")
    return path


def parse_yaml(text: str, where: str | Path, what: str = "YAML"):
    """`yaml.safe_load(text)`; bad YAML raises one line, "WHERE:LINE: WHAT is not valid YAML (line N, column M:
    problem); fix the file" (PyYAML's own text spans several lines with a caret)."""
    import yaml

    from convert.common.errors import yaml_problem

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        place = f"{where}:{mark.line + 1}" if mark is not None else str(where)
        raise EdgeftError(f"{place}: {what} is not valid YAML ({yaml_problem(exc)}); fix the file") from None
    except ValueError as exc:  # a scalar PyYAML's constructors refuse, such as the date 2020-13-45
        raise EdgeftError(f"{where}: {what} is not valid YAML ({exc}); fix the file") from None
    except RecursionError:
        raise EdgeftError(f"{where}: {what} is not valid YAML for us (nested too deeply to parse); flatten it") from None


def read_yaml(path: str | Path, what: str = "YAML"):
    """The parsed YAML file at `path` (None when it is empty). A missing, unreadable, non-UTF-8 or malformed file is
    one EdgeftError line naming the file (and the line, for bad YAML) and what to do."""
    path = check_input_file(path, f"pass a {what} YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise EdgeftError(f"{path}: cannot read the {what} ({exc.strerror}); pass an existing YAML file") from None
    except UnicodeDecodeError as exc:
        raise EdgeftError(f"{path}: {what} is not UTF-8 (byte 0x{exc.object[exc.start]:02x} at byte {exc.start}); "
                          "re-encode the file as UTF-8") from None
    return parse_yaml(text, path, what)
