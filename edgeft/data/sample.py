"""`edgeft data sample`: random examples rendered exactly as the model sees them, trained spans marked, in Markdown.

Someone must read 50 examples by hand before training; this is the page they read. With a tokenizer, the text is
the model's chat template rendering and the marks come from the real label mask (the tokens that carry loss);
without one, the ChatML rendering and the assistant spans are shown, and the page says so.
"""

from __future__ import annotations

import random
from pathlib import Path

from dataclasses import replace

from convert.common.jsonl import Record
from convert.common.pairs import scan_examples, sides
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file, refuse_own_input

TRAIN_OPEN, TRAIN_CLOSE = "⟦", "⟧"


def mark(text: str, ranges: list[tuple[int, int]]) -> str:
    """`text` with each [start, end) range wrapped in the trained-span marks."""
    pieces, cursor = [], 0
    for start, end in ranges:
        pieces += [text[cursor:start], TRAIN_OPEN, text[start:end], TRAIN_CLOSE]
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _fence(text: str) -> str:
    # A fence longer than any backtick run inside, so code in an answer cannot close the block early.
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def _render_with_tokenizer(record: Record, tokenizer, chat_template, where: str) -> tuple[str, str]:
    from edgeft.data.masking import IGNORE_INDEX, mask_example

    example = mask_example(record.messages, tokenizer, chat_template, where=where,
                           tools=(record.data or {}).get("tools"))
    trained = sum(1 for label in example.labels if label != IGNORE_INDEX)
    return mark(example.text, example.trained_ranges()), f"{len(example.input_ids)} tokens, {trained} trained"


def _render_plain(record: Record, where: str) -> tuple[str, str]:
    from edgeft.data.masking import assistant_spans
    from edgeft.data.templates import CHATML_TEMPLATE

    text, spans = assistant_spans(record.messages, CHATML_TEMPLATE, where=where, tools=(record.data or {}).get("tools"))
    trained = sum(span.end - span.start for span in spans)
    return mark(text, [(s.start, s.end) for s in spans]), f"{len(text)} characters, {trained} trained"


def _rendered(record: Record, title: str, where: str, tokenizer, chat_template) -> list[str]:
    try:
        if tokenizer is not None:
            body, summary = _render_with_tokenizer(record, tokenizer, chat_template, where)
        else:
            body, summary = _render_plain(record, where)
    except EdgeftError as exc:
        return ["", f"## {title} {where}", "", f"**Cannot be trained:** {exc}"]
    fence = _fence(body)
    return ["", f"## {title} {where} ({summary})", "", f"{fence}text", body, fence]


def write_sample(
    path: str | Path,
    out_path: str | Path,
    *,
    n: int = 50,
    seed: int = 0,
    tokenizer_dir: str | Path | None = None,
    chat_template: str | None = None,
) -> Path:
    """Write `n` random examples of `path` (in file order) to a Markdown file for reading by hand."""
    if n < 1:
        raise EdgeftError(f"-n {n}: the sample needs at least one example")
    refuse_own_input(out_path, {"input file": path, "tokenizer folder": tokenizer_dir})
    records = scan_examples(path)
    valid = [r for r in records if not r.problems]
    if not valid:
        raise EdgeftError(f"{path}: no valid conversations to sample; run `edgeft data check {path}`")
    chosen = sorted(random.Random(seed).sample(valid, min(n, len(valid))), key=lambda r: r.line)
    tokenizer = None
    if tokenizer_dir is not None:
        from edgeft.data.masking import load_tokenizer
        from edgeft.data.templates import template_for

        tokenizer = load_tokenizer(tokenizer_dir)
        chat_template = chat_template or template_for(tokenizer_dir)
        how = f"rendered with the chat template of `{tokenizer_dir}`; marks are the tokens that carry loss"
    else:
        how = "rendered as ChatML (pass --tokenizer MODEL_DIR to see the model's own template and tokens)"
    skipped = len(records) - len(valid)
    lines = [
        f"# {len(chosen)} examples from {path} (seed {seed})",
        "",
        f"Each example is {how}. Text between {TRAIN_OPEN} and {TRAIN_CLOSE} is trained (assistant content and its "
        "end-of-turn marker); everything else is context the model reads but is not trained to write.",
    ]
    if skipped:
        lines += ["", f"{skipped} lines with errors were left out: run `edgeft data check {path}`."]
    for number, record in enumerate(chosen, start=1):
        for side, messages in sides(record):  # a preference pair: its chosen, then its rejected conversation
            lines += _rendered(replace(record, messages=messages), f"{number}.{' ' + side if side else ''}",
                               f"{path}:{record.line}", tokenizer, chat_template)
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out_path
