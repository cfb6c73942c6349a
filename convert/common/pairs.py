"""Preference pairs in TRL's format: one `{"prompt", "chosen", "rejected"}` object a line.

`prompt` is a list of messages or a string (a user turn); `chosen` and `rejected` are assistant message lists or
strings. TRL's implicit-prompt form (no `prompt`, `chosen` and `rejected` whole conversations sharing the prompt)
is read too. Each side becomes a conversation, prompt + answer, masked by edgeft.data.masking
(edgeft.train.batches.tokenize_pairs) exactly as SFT masks a conversation, so the log-probabilities a preference
loss compares are over the assistant tokens SFT trains on and llama.cpp later scores (runtime.pairs_eval).
A shared leaf (parsing only, nothing heavy), so runtime/ reads pairs by the same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convert.common.jsonl import Record, iter_lines, parse_json_line, read_jsonl, scan_jsonl, validate_messages
from convert.common.errors import EdgeftError

SIDES = ("chosen", "rejected")
SHAPE = '{"prompt": [...] or "...", "chosen": [...] or "...", "rejected": [...] or "..."}'


def is_pair_object(obj: Any) -> bool:
    """A line meant as a preference pair (it names a side and is not a conversation)."""
    return isinstance(obj, dict) and "messages" not in obj and any(side in obj for side in SIDES)


def _as_messages(value: Any, role: str) -> list | None:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    return value if isinstance(value, list) else None


def split_pair(obj: dict) -> tuple[list | None, list | None, list | None]:
    """(prompt, chosen, rejected) as message lists; None for a part that is neither a string nor a list."""
    chosen, rejected = _as_messages(obj.get("chosen"), "assistant"), _as_messages(obj.get("rejected"), "assistant")
    if "prompt" in obj:
        return _as_messages(obj["prompt"], "user"), chosen, rejected
    if chosen is None or rejected is None:
        return None, chosen, rejected
    # Implicit prompt: the longest common leading run of messages is the prompt (TRL's maybe_extract_prompt).
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def pair_problems(obj: Any) -> list[str]:
    """Every problem of one parsed line as a preference pair (empty: a usable pair)."""
    if not isinstance(obj, dict):
        return [f"not a preference pair; expected {SHAPE}"]
    if "messages" in obj:
        return ['a conversation ({"messages": ...}), not a preference pair; train it with --objective sft, or '
                f"write pairs as {SHAPE}"]
    missing = [side for side in SIDES if side not in obj]
    if missing:
        return [f'missing "{missing[0]}" (a preference pair needs both "chosen" and "rejected")']
    prompt, chosen, rejected = split_pair(obj)
    if prompt is None:
        return ['"prompt" must be a string or a list of messages']
    problems = []
    for side, answer in zip(SIDES, (chosen, rejected)):
        if not answer:
            problems.append(f'"{side}" is empty')
        elif any(not isinstance(m, dict) or m.get("role") != "assistant" for m in answer):
            problems.append(f'"{side}" must be a string or a list of assistant messages')
        else:
            problems += [f"{side}: {p}" for p in validate_messages({"messages": prompt + answer})]
    if not problems and chosen == rejected:
        problems.append('"chosen" and "rejected" are identical, so the pair prefers nothing; fix or drop it')
    return problems


def parse_pair_line(number: int, raw: str) -> Record:
    """One JSONL line as a pair Record: `messages` is the prompt + chosen conversation (what duplicates,
    decontamination and lengths are checked on), `data` the whole object."""
    obj, problem = parse_json_line(raw)
    if problem is not None:
        return Record(number, raw, None, [problem])
    problems = pair_problems(obj)
    if problems:
        return Record(number, raw, None, problems, obj if isinstance(obj, dict) else None)
    prompt, chosen, _ = split_pair(obj)
    return Record(number, raw, prompt + chosen, [], obj)


def rejected_conversation(record: Record) -> list[dict]:
    prompt, _, rejected = split_pair(record.data)
    return prompt + rejected


def holds_pairs(path: str | Path) -> bool:
    """Whether a JSONL file is a preference set: its first JSON object line is a pair."""
    for _, line, problem in iter_lines(path):
        if problem is None and line.strip():
            obj, bad = parse_json_line(line)
            if bad is None:
                return is_pair_object(obj)
    return False


def scan_examples(path: str | Path) -> list[Record]:
    """Every line of a conversation or preference file as a Record (scan_jsonl); a pair's `messages` is its
    prompt + chosen conversation, so data check and data sample read both kinds of file."""
    return scan_jsonl(path, parse_pair_line) if holds_pairs(path) else scan_jsonl(path)


def sides(record: Record) -> list[tuple[str, list[dict]]]:
    """The conversations one example trains on: ("", messages), or a pair's chosen and rejected ones."""
    if not is_pair_object(record.data):
        return [("", record.messages)]
    return [("chosen", record.messages), ("rejected", rejected_conversation(record))]


def read_pairs(path: str | Path) -> list[Record]:
    """The pairs of a JSONL file; the first bad line raises `FILE:LINE: what`."""
    records = read_jsonl(path, parse_pair_line, advice=f"; run `edgeft data check {path}` for the full list")
    if not records:
        raise EdgeftError(f"{path}: empty, no preference pairs in it; expected one {SHAPE} per line")
    return records
