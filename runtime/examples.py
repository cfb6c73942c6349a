"""Eval examples: each JSONL conversation becomes (prompt messages, gold answer), the gold being the last
assistant turn; and the baseline's prompt: system text plus K solved examples from the training set.

Eval files are read by convert.common.jsonl's JSONL reader (a leaf: the laptop install, which has no training extras,
has it) with this module's parser: the checks are the few an evaluation depends on, each reported as file:line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convert.common.jsonl import Record, lone_surrogate, parse_json_line, read_jsonl
from convert.common.messages import ROLES, MessageError, normalize_message
from convert.common.errors import EdgeftError
from runtime.eval_settings import SettingError


@dataclass
class Example:
    line: int
    prompt: list[dict]  # every turn before the last assistant one
    gold: str

    @property
    def question(self) -> str:
        """The last user turn, for review.md and the judge."""
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else ""


def parse_eval_line(number: int, raw: str) -> Record:
    """One eval line as a Record: the few checks an evaluation depends on (role names, string content, text that
    is text), not the training side's full order rules."""
    obj, problem = parse_json_line(raw)
    if problem is not None:
        return Record(number, raw, None, [f"{problem.replace('invalid JSON', 'not valid JSON', 1)}; one "
                                          "conversation per line"])
    messages = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(messages, list) or not messages:
        return Record(number, raw, None, ['expected {"messages": [{"role": ..., "content": ...}, ...]}'])
    if obj.get("tools") is not None:  # a prompt rendered without them would be another prompt than trained
        return Record(number, raw, None, ["tools: eval renders prompts without tool definitions; evaluate tool "
                                          "calling with `edgeft serve` and your client, or drop the tools"])
    normalized = []
    for turn, message in enumerate(messages):
        try:  # the one message schema (convert.common.messages): its role table, tool calls kept for the template
            message = normalize_message(message, turn)
        except MessageError as exc:
            return Record(number, raw, None, [f"message {turn} needs a role in {list(ROLES)} and string content "
                                              f"({str(exc).removeprefix(f'message {turn}').lstrip(' :')})"])
        if (surrogate := lone_surrogate(message["content"])) is not None:
            return Record(number, raw, None, [f"message {turn} holds a lone surrogate {surrogate}, which is not "
                                              "text; fix or drop the example"])
        normalized.append(message)
    return Record(number, raw, normalized, [], obj)


def read_conversations(path: str | Path, *, setting: str = "data") -> list[tuple[int, list[dict]]]:
    """(line number, messages) for each non-empty line; EdgeftError with file:line on the first bad one, and a
    SettingError naming `setting` (the setting that gave the path) for a missing or empty file."""
    path = Path(path)
    if not path.is_file():
        what = "not a regular file" if path.exists() else "file not found"
        raise SettingError(f"<{setting}> {path}: {what}; pass a JSONL file of {{\"messages\": [...]}} lines", setting)
    conversations = [(record.line, record.messages) for record in read_jsonl(path, parse_eval_line)]
    if not conversations:
        raise SettingError(f"<{setting}> {path}: no conversations in the file", setting)
    return conversations


def read_examples(path: str | Path, *, limit: int | None = None) -> list[Example]:
    if limit is not None and limit < 1:
        raise SettingError(f"<limit> {limit}: must be at least 1 (leave it out to evaluate every example)", "limit")
    examples = []
    for number, messages in read_conversations(path):
        if messages[-1]["role"] != "assistant":
            raise EdgeftError(f"{path}:{number}: the last message must be the assistant's gold answer")
        if messages[-1].get("tool_calls"):
            raise EdgeftError(f"{path}:{number}: the gold answer is a tool call, and eval scores an answer's text "
                              "against the gold's; end the example with the assistant's text answer")
        if not any(m["role"] == "user" for m in messages[:-1]):
            raise EdgeftError(f"{path}:{number}: no user turn before the gold answer")
        examples.append(Example(number, messages[:-1], messages[-1]["content"]))
        if limit is not None and len(examples) >= limit:
            break
    return examples


def shot_turns(path: str | Path | None, shots: int) -> list[dict]:
    """User/assistant turns of the first `shots` training conversations (system turns dropped: the baseline's
    own system prompt leads). The first ones, not a random draw, so the baseline prompt is reproducible."""
    if shots < 0:
        raise SettingError(f"<shots> {shots}: must be 0 or more", "shots")
    if shots == 0:
        return []
    if path is None:
        raise SettingError(f"<shots> {shots} needs <shots_from> TRAIN.jsonl to draw the examples from", "shots",
                           "shots_from")
    turns: list[dict] = []
    conversations = read_conversations(path, setting="shots_from")
    for _number, messages in conversations[:shots]:
        turns.extend(m for m in messages if m["role"] != "system")
    if len(conversations) < shots:
        raise SettingError(f"<shots_from> {path}: only {len(conversations)} conversations for <shots> {shots}",
                           "shots_from", "shots")
    return turns


def baseline_prompt(example: Example, *, system: str | None, shots: list[dict]) -> list[dict]:
    """The well-prompted base: system prompt, K solved examples, then the example's own turns."""
    own_system = [m for m in example.prompt if m["role"] == "system"]
    rest = [m for m in example.prompt if m["role"] != "system"]
    lead = [{"role": "system", "content": system}] if system else own_system
    return lead + list(shots) + rest
