"""`edgeft data check`: every problem of a conversation dataset, one `FILE:LINE: severity: what` line each.

Errors (the example must not be trained): unreadable JSON, schema and role-order problems, a non-JSON answer under
`fmt="json"`, an exact duplicate after its first occurrence, a training example that holds an eval example, a
conversation the model's chat template refuses. Warnings (read them): near-duplicates, examples longer than
`max_len` tokens, a message holding a control token's text (trained as text, never as the token). `fix()` writes the file back without the examples that have errors.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgeft.data import decontam, dedup
from convert.common.jsonl import Record, write_jsonl_lines
from convert.common.pairs import scan_examples
from convert.common.errors import EdgeftError
from convert.common.fsutil import refuse_own_input

FORMATS = ("text", "json")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    severity: str  # "error" or "warning"
    kind: str  # short machine-readable name: "schema", "duplicate", "near-duplicate", "contaminated", ...
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass
class CheckReport:
    train_path: str
    eval_path: str | None
    records: list[Record]
    errors: list[Finding] = field(default_factory=list)
    warnings: list[Finding] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def add(self, path: str, line: int, severity: str, kind: str, message: str) -> None:
        target = self.errors if severity == "error" else self.warnings
        target.append(Finding(path, line, severity, kind, message))

    def findings(self) -> list[Finding]:
        order = {self.train_path: 0, self.eval_path: 1}
        return sorted(
            self.errors + self.warnings, key=lambda f: (order.get(f.path, 2), f.line, f.severity != "error")
        )

    def lines_with(self, severity: str, kinds: tuple[str, ...] | None = None, path: str | None = None) -> set[int]:
        path = path or self.train_path
        pool = self.errors if severity == "error" else self.warnings
        return {f.line for f in pool if f.path == path and (kinds is None or f.kind in kinds)}

    def lines(self) -> list[str]:
        """The report as printed: findings in file order, then the stats summary."""
        out = [str(f) for f in self.findings()]
        s = self.stats
        out.append(
            f"{self.train_path}: {s['examples']} examples ({s['lines']} lines), {s['turns']} turns, "
            f"{s['characters']} characters; {len(self.errors)} errors, {len(self.warnings)} warnings"
        )
        if "tokens" in s:
            t = s["tokens"]
            out.append(
                f"{self.train_path}: chat-rendered tokens min {t['min']}, median {t['median']}, "
                f"p95 {t['p95']}, max {t['max']}"
            )
        if "chat_template" in s:
            out.append(f"{self.train_path}: rendered with {s['chat_template']}")
        if "near_duplicates" in s:
            nd = s["near_duplicates"]
            out.append(
                f"{self.train_path}: {nd['examples']} near-duplicates in {nd['groups']} groups (largest: "
                f"{nd['largest']} examples like {self.train_path}:{nd['largest_first_line']}); templated examples that "
                "differ only in a value count too: raise --near-dup-threshold if that is intended"
            )
        if s.get("eval_examples") is not None:
            out.append(f"{self.eval_path}: {s['eval_examples']} examples compared for contamination")
        return out

    @property
    def ok(self) -> bool:
        return not self.errors


def _turn_key(record: Record) -> str:
    # Every field a template renders: two examples that differ only in a tool call's arguments are not duplicates.
    return json.dumps([record.messages, (record.data or {}).get("tools")], ensure_ascii=False, sort_keys=True)


def _record_key(record: Record) -> str:
    """What makes two examples the same: the conversation; for a preference pair, the rejected answer too."""
    from convert.common.pairs import is_pair_object, rejected_conversation

    key = _turn_key(record)
    if not is_pair_object(record.data):
        return key
    return key + json.dumps(rejected_conversation(record), ensure_ascii=False, sort_keys=True)


def _check_schema(report: CheckReport, path: str, records: list[Record]) -> None:
    for record in records:
        for problem in record.problems:
            report.add(path, record.line, "error", "schema", problem)


def _check_json_answers(report: CheckReport, valid: list[Record]) -> None:
    for record in valid:
        for index, message in enumerate(record.messages):
            if message["role"] != "assistant":
                continue
            try:
                json.loads(message["content"])
            except json.JSONDecodeError as exc:
                report.add(
                    report.train_path, record.line, "error", "format",
                    f"assistant turn {index} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})",
                )


def _check_exact_duplicates(report: CheckReport, valid: list[Record]) -> set[int]:
    first_seen: dict[str, int] = {}
    duplicates = set()
    for record in valid:
        key = _record_key(record)
        if key in first_seen:
            duplicates.add(record.line)
            report.add(
                report.train_path, record.line, "error", "duplicate",
                f"exact duplicate of {report.train_path}:{first_seen[key]}",
            )
        else:
            first_seen[key] = record.line
    return duplicates


def _turn_text(message: dict) -> str:
    calls = message.get("tool_calls")
    return message["content"] + (" " + json.dumps(calls, ensure_ascii=False, sort_keys=True) if calls else "")


def _normalised_turns(messages: list[dict]) -> list[str]:
    return [dedup.normalize_text(_turn_text(m)) for m in messages if m["role"] != "system"]


def _check_near_duplicates(report: CheckReport, valid: list[Record], turns: list[list[str]], threshold: float) -> None:
    texts = [" ".join(t) for t in turns]
    found = dedup.near_duplicates(texts, threshold)
    sizes: dict[int, int] = {}
    for dup in found:
        sizes[dup.original] = sizes.get(dup.original, 1) + 1
    if sizes:
        largest = max(sizes, key=lambda original: sizes[original])
        report.stats["near_duplicates"] = {
            "examples": len(found), "groups": len(sizes), "largest": sizes[largest], "largest_first_line": valid[largest].line,
        }
    for dup in found:
        report.add(
            report.train_path, valid[dup.index].line, "warning", "near-duplicate",
            f"near-duplicate of {report.train_path}:{valid[dup.match].line} (similarity "
            f"{dedup.shown_similarity(dup.similarity)})" + ("" if dup.match == dup.original else
                                                           f", in the group of {report.train_path}:"
                                                           f"{valid[dup.original].line}"),
        )


def _check_contamination(report: CheckReport, valid: list[Record], turns: list[list[str]], eval_valid: list[Record]):
    evals = decontam.eval_texts([r.messages for r in eval_valid], dedup.normalize_text)
    for hit in decontam.find_contamination(turns, evals):
        report.add(
            report.train_path, valid[hit.train_index].line, "error", "contaminated",
            f"contains the {hit.what} of eval example {report.eval_path}:{eval_valid[hit.eval_index].line} "
            f"({hit.how}); remove it from training",
        )


TOKENIZE_BATCH = 4096  # texts per batch encode: the progress bar moves, and memory stays bounded


# Turn markers of the common chat formats, looked for when no tokenizer says which tokens are control tokens.
TURN_MARKERS = ("<|im_start|>", "<|start_header_id|>", "<|end_header_id|>", "<|begin_of_text|>", "<start_of_turn>",
                "<|user|>", "<|assistant|>", "<|system|>")


def _control_warning(report: CheckReport, line: int, control: str, known: bool) -> None:
    report.add(report.train_path, line, "warning", "control-token",
               f"a message holds the text of the {'chat marker' if known else 'control token'} {control!r}; it is "
               "trained (and served) as plain text, never as the token: if it was meant to end or start a turn, "
               "split the conversation into messages instead")


def _check_control_text(report: CheckReport, valid: list[Record]) -> None:
    """Without --tokenizer: the common formats' turn markers in any message (with it, the model's own tokens)."""
    from runtime.hf_tokenizer import LLAMA_CPP_CONTROL_NAMES

    markers = sorted(set(TURN_MARKERS) | {name for name in LLAMA_CPP_CONTROL_NAMES if name.startswith("<|")})
    for record in valid:
        texts = [_turn_text(m) for m in record.messages]
        found = next((marker for marker in markers if any(marker in text for text in texts)), None)
        if found is not None:
            _control_warning(report, record.line, found, known=True)


def _forged_control(text, controls: list[str]) -> str | None:
    """The control token's text a message of the rendered chat `text` holds (refused, EdgeftError, when the
    template's rendering cannot tell markup from message text)."""
    from convert.vocab.chat_spans import forged, require_spans

    require_spans(text, controls, "the conversation")
    return forged(text, controls)


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of rendered chats `texts` as training feeds them (`tokenizer(text, add_special_tokens=False)`,
    then the BOS llama.cpp adds, `convert.vocab.special.bos_first`), batched and fast.

    The Rust backend's batch encode spreads over the cores; `encode_batch_fast` skips the character offsets we do
    not need here, and calling the backend directly skips transformers' per-example Python conversion.
    """
    from convert.vocab.chat_spans import ChatText
    from runtime.hf_tokenizer import chat_ids, hf_specials, llama_cpp_bos_id
    from convert.vocab.special import bos_first

    controls = [special.text for special in hf_specials(tokenizer) if special.control]
    # A chat whose messages hold a control token's text is tokenized piecewise (chat_ids): rare, so one by one.
    piecewise = {i: len(chat_ids(tokenizer, text)) for i, text in enumerate(texts)
                 if isinstance(text, ChatText) and _forged_control(text, controls) is not None}
    bos = llama_cpp_bos_id(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    lengths: list[int] = []
    for lo in tqdm(range(0, len(texts), TOKENIZE_BATCH), desc="tokenize", unit="chunk", disable=None, leave=False):
        batch = texts[lo : lo + TOKENIZE_BATCH]
        if backend is not None:
            encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
            lengths += [len(bos_first(encoding.ids, bos)) for encoding in encode(batch, add_special_tokens=False)]
        else:
            lengths += [len(bos_first(ids, bos)) for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]]
    return [piecewise.get(i, length) for i, length in enumerate(lengths)]


def _check_tokens(
    report: CheckReport, valid: list[Record], tokenizer_dir: str, max_len: int | None, chat_template: str | None
) -> None:
    from runtime.hf_tokenizer import hf_specials
    from edgeft.data.masking import assistant_spans, load_tokenizer
    from edgeft.data.templates import CHATML_TEMPLATE, special_tokens_of, template_for

    tokenizer = load_tokenizer(tokenizer_dir)
    # Training falls back to ChatML for a base model without a template; check what training will render.
    template = chat_template or template_for(tokenizer_dir, default=CHATML_TEMPLATE)
    if template == CHATML_TEMPLATE and not chat_template:
        report.stats["chat_template"] = "ChatML (the model folder has no chat template)"
    specials = special_tokens_of(tokenizer)
    controls = [special.text for special in hf_specials(tokenizer) if special.control]
    rendered, rendered_records = [], []
    for record in tqdm(valid, desc="render + locate trained spans", unit="ex", disable=None, leave=False):
        # The same span search training uses: a template that refuses the conversation or rewrites an answer
        # (so its label mask would be empty or wrong) is caught here, before any GPU time is spent.
        where = f"{report.train_path}:{record.line}"
        try:
            text, _ = assistant_spans(record.messages, template, specials, where=where,
                                      tools=(record.data or {}).get("tools"))
            forged = _forged_control(text, controls)
        except EdgeftError as exc:
            report.add(report.train_path, record.line, "error", "template", str(exc).removeprefix(f"{where}: "))
            continue
        if forged is not None:
            _control_warning(report, record.line, forged, known=False)
        rendered.append(text)
        rendered_records.append(record)
    if not rendered:
        return
    lengths = np.array(token_lengths(tokenizer, rendered), dtype=np.int64)
    report.stats["tokens"] = {
        "min": int(lengths.min()),
        "median": int(np.median(lengths)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "total": int(lengths.sum()),
    }
    if max_len is not None:
        for record, length in zip(rendered_records, lengths.tolist()):
            if length > max_len:
                report.add(
                    report.train_path, record.line, "warning", "too-long",
                    f"{length} tokens > --max-len {max_len}: the assistant's answer would be truncated",
                )


def check_dataset(
    train: str | Path,
    *,
    eval_path: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    fmt: str | None = None,
    max_len: int | None = None,
    near_dup_threshold: float = 0.8,
    chat_template: str | None = None,
) -> CheckReport:
    """Check a training JSONL (and its eval set) and return every finding plus stats; nothing is modified."""
    if fmt is not None and fmt not in FORMATS:
        raise EdgeftError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if max_len is not None and tokenizer_dir is None:
        raise EdgeftError("--max-len counts tokens, so it needs --tokenizer MODEL_DIR")
    if not 0.0 < near_dup_threshold <= 1.0:
        raise EdgeftError(f"near-duplicate threshold {near_dup_threshold} must be in (0, 1]")
    train_path = str(train)
    # A preference set is checked on its prompt + chosen conversations (duplicates also compare the rejected).
    records = scan_examples(train)
    report = CheckReport(train_path, str(eval_path) if eval_path else None, records)
    _check_schema(report, train_path, records)
    valid = [r for r in records if not r.problems]
    report.stats.update(
        lines=len(records),
        examples=len(valid),
        turns=sum(len(r.messages) for r in valid),
        characters=sum(len(m["content"]) for r in valid for m in r.messages),
    )
    if fmt == "json":
        _check_json_answers(report, valid)
    duplicates = _check_exact_duplicates(report, valid)
    all_turns = [_normalised_turns(r.messages) for r in valid]
    unique = [i for i, r in enumerate(valid) if r.line not in duplicates]
    _check_near_duplicates(report, [valid[i] for i in unique], [all_turns[i] for i in unique], near_dup_threshold)
    if eval_path is not None:
        eval_records = scan_examples(eval_path)
        _check_schema(report, report.eval_path, eval_records)
        eval_valid = [r for r in eval_records if not r.problems]
        report.stats["eval_examples"] = len(eval_valid)
        # Duplicates carry an error already, but a leak must still be named on every copy: compare all valid rows.
        _check_contamination(report, valid, all_turns, eval_valid)
    if tokenizer_dir is not None:
        _check_tokens(report, valid, str(tokenizer_dir), max_len, chat_template)
    else:
        _check_control_text(report, valid)
    return report


def fix(report: CheckReport, out_path: str | Path, *, drop_near_dups: bool = False) -> tuple[Path, int]:
    """Write the training file without the examples that have errors (and near-duplicates when asked).

    Returns (path, number of examples dropped). The input file is never modified.
    """
    out_path = Path(out_path)
    # The eval file is an input too: --fix onto it replaced the eval set with the cleaned training set (exit 0).
    refuse_own_input(out_path, {"training file": report.train_path, "eval file": report.eval_path}, option="--fix")
    drop = report.lines_with("error")
    if drop_near_dups:
        drop |= report.lines_with("warning", ("near-duplicate",))
    kept = [r.raw for r in report.records if r.line not in drop]
    write_jsonl_lines(out_path, kept)
    return out_path, len(report.records) - len(kept)
