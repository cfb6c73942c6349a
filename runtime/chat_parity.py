"""Chat parity, the one check: what HF (and training) renders and tokenizes against what the GGUF renders and feeds.

Both loops use it: `edgeft eval --hf` (runtime/parity.py, the eval conversations) and the release
(edgeft/release/parity.py, fixed probes plus some eval conversations). Each case is one conversation and whether
the generation prompt is added. The HF side is a tokenizer the caller loaded: `apply_chat_template`, then the ids
training feeds (`runtime.hf_tokenizer.chat_ids`: `encode` without special tokens, then the BOS the GGUF made
of that folder adds, by the one rule `convert.vocab.special.bos_first`). The GGUF
side is its embedded template through llama-cpp-python (`runtime.generate.render_chat`) and the ids our runtime
feeds the model (`prompt_tokens`). Three facts per case:
1. the template renders the same text;
2. the ids fed at inference are the ones HF gives, BOS included (see `_bos_finding`);
3. where the texts differ, llama.cpp still tokenizes HF's text as HF does (a tokenizer bug is not hidden behind a
   template one).
A template that refuses a conversation on one side only is a mismatch; both refusing is agreement.

BOS, measured on the fixtures against llama.cpp's sources (vendor/llama.cpp, common/chat.cpp applies the template
then strips a leading BOS text when add_bos_token is set; the server tokenizes with add_special=true):
- template writes BOS first, GGUF add_bos_token: every chat path feeds one BOS (llama-server strips and re-adds,
  `prompt_tokens` sees it is there, llama-cpp-python's Jinja formatter tokenizes with add_bos=False). Only a naive
  `tokenize(text, add_bos=True)` doubles it, which no runtime does at inference: not a mismatch;
- template writes none, GGUF add_bos_token: llama-server and edgeft's eval/serve feed a BOS, and so does training
  (the HF folder says add_bos_token too): parity. Only when the HF folder adds none (its add_bos_token is false, the
  GGUF's true: converted from another folder) is it a mismatch ("adds BOS"), which HF's own
  `encode(add_special_tokens=False)` would have shown for every such template;
- template writes BOS after something (a newline), GGUF add_bos_token: llama.cpp feeds two BOS, and training
  refuses the template: a mismatch ("double BOS") even where the HF side's ids are the same two.

No transformers import: the tokenizer object comes from the caller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from runtime.hf_tokenizer import chat_ids
from convert.common.errors import EdgeftError
from runtime.generate import embedded_template, merge_system, prompt_tokens, render_chat, token_text
from runtime.load import open_gguf

SYSTEM = "You are a terse assistant. Answer in one line."
# Leading and doubled spaces, newlines, digits, accents, CJK and emoji: where tokenizers and templates drift.
PROBES: list[tuple[str, list[dict], bool]] = [
    ("one turn, no system, generation prompt", [{"role": "user", "content": "What's 2+2?"}], True),
    ("one turn, system, generation prompt",
     [{"role": "system", "content": SYSTEM}, {"role": "user", "content": " Hi  there,\ncafé 你好 🙂"}], True),
    ("multi-turn, system", [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": " Blue."},
        {"role": "user", "content": "  And 12345?\n"}, {"role": "assistant", "content": "Twelve thousand… 🙂"},
    ], False),
    ("multi-turn, no system, generation prompt", [
        {"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "SELECT 1;  -- twice"},
    ], True),
]
SHOWN = 5  # ids and pieces shown around a difference


@dataclass(frozen=True)
class Case:
    name: str
    messages: list[dict]
    add_generation_prompt: bool
    example: int | None = None  # index of the conversation it comes from (None for a probe)


def conversation_cases(conversations: Sequence[Sequence[dict]]) -> list[Case]:
    """Each conversation whole, and its prompt with the generation prompt (as eval and serving render it) when it
    ends with an assistant turn."""
    cases = []
    for index, messages in enumerate(conversations):
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        cases.append(Case(f"conversation {index}", messages, False, index))
        if messages[-1]["role"] == "assistant" and len(messages) > 1:
            cases.append(Case(f"conversation {index}, generation prompt", messages[:-1], True, index))
    return cases


def chat_cases(conversations: Sequence[Sequence[dict]] = (), limit: int = 8) -> list[Case]:
    """The release's cases: the fixed probes, then `conversation_cases` of the first `limit` conversations."""
    return [Case(name, messages, prompt) for name, messages, prompt in PROBES] + \
        conversation_cases(list(conversations)[:limit])


def _hf_render(tokenizer, case: Case) -> tuple[str, list[dict]]:
    try:
        return tokenizer.apply_chat_template(case.messages, tokenize=False,
                                             add_generation_prompt=case.add_generation_prompt), case.messages
    except Exception:  # jinja2 TemplateError from raise_exception(): Gemma has no system role
        if not any(m["role"] == "system" for m in case.messages):
            raise
        # What render_chat does on the GGUF side for such templates: fold the system turn into the first user one.
        folded = merge_system(case.messages)
        return tokenizer.apply_chat_template(folded, tokenize=False,
                                             add_generation_prompt=case.add_generation_prompt), folded


def _first_difference(a: Sequence, b: Sequence) -> int:
    for index, (left, right) in enumerate(zip(a, b)):
        if left != right:
            return index
    return min(len(a), len(b))


def _refusals(tokenizer, llm, case: Case, path: str) -> str | None:
    """None when both sides render the case; "" when both refuse it; else which side refuses, and why."""
    why = {}
    try:
        _hf_render(tokenizer, case)
    except Exception as exc:  # transformers raises jinja2 errors and ValueError
        why["HF"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        render_chat(llm, case.messages, add_generation_prompt=case.add_generation_prompt, path=path)
    except EdgeftError as exc:
        why["GGUF"] = str(exc)
    if not why:
        return None
    return "" if len(why) == 2 else "; ".join(f"only {side}'s template refuses it ({text})" for side, text in why.items())


def _token_difference(tokenizer, llm, hf_ids: list[int], gguf_ids: list[int]) -> dict:
    at = _first_difference(hf_ids, gguf_ids)
    return {"position": at, "hf_len": len(hf_ids), "gguf_len": len(gguf_ids),
            "hf": tokenizer.convert_ids_to_tokens(hf_ids[at:at + SHOWN]),
            "gguf": [token_text(llm, i) for i in gguf_ids[at:at + SHOWN]],
            "hf_ids": hf_ids[at:at + SHOWN], "gguf_ids": gguf_ids[at:at + SHOWN]}


def _bos_finding(llm, written: list[int], fed: list[int]) -> dict | None:
    """When llama.cpp put a BOS in front of what the template wrote (add_bos_token): "adds BOS" when the template
    wrote none, "double BOS" when it wrote one further on. A BOS the template writes first is never doubled."""
    if len(fed) != len(written) + 1:
        return None
    bos = llm.token_bos()
    found = {"token": token_text(llm, bos)}
    if bos in written:
        found.update(kind="double BOS", template_bos_at=written.index(bos) + 1)
    else:
        found["kind"] = "adds BOS"
    return found


def _compare_case(tokenizer, llm, case: Case, path: str) -> dict | None:
    """The mismatch entry of one case, or None when text and ids agree."""
    refused = _refusals(tokenizer, llm, case, path)
    if refused is not None:
        return {"case": case.name, "refused": refused} if refused else None
    hf_text, messages = _hf_render(tokenizer, case)
    gguf_text = render_chat(llm, messages, add_generation_prompt=case.add_generation_prompt, path=path)
    hf_written = [int(i) for i in tokenizer.encode(hf_text, add_special_tokens=False)]
    hf_ids = chat_ids(tokenizer, hf_text)
    written = [int(i) for i in llm.tokenize(gguf_text.encode("utf-8"), add_bos=False, special=True)]
    fed = [int(i) for i in prompt_tokens(llm, gguf_text)]
    bos = _bos_finding(llm, written, fed)
    doubled = bos is not None and bos["kind"] == "double BOS"
    if hf_text == gguf_text and hf_ids == fed and not doubled:
        return None
    entry: dict = {"case": case.name, "add_generation_prompt": case.add_generation_prompt}
    if hf_text != gguf_text:
        at = _first_difference(hf_text, gguf_text)
        entry["template"] = {"char": at, "hf": hf_text[max(0, at - 20):at + 40],
                             "gguf": gguf_text[max(0, at - 20):at + 40]}
        same_text = [int(i) for i in llm.tokenize(hf_text.encode("utf-8"), add_bos=False, special=True)]
        if same_text != hf_written:  # the tokenizers disagree too, on the very same text
            entry["tokenizer"] = _token_difference(tokenizer, llm, hf_written, same_text)
    if hf_ids != fed:
        entry["tokens"] = _token_difference(tokenizer, llm, hf_ids, fed)
    if doubled or (bos and hf_ids == written):  # two BOS fed; or one fed that HF (training) never feeds
        entry["bos"] = bos
    return entry


def _tokens_line(t: dict) -> str:
    return (f"first differing token at position {t['position']}: HF {t['hf'][:1]} {t['hf_ids'][:1]} vs GGUF "
            f"{t['gguf'][:1]} {t['gguf_ids'][:1]} ({t['hf_len']} vs {t['gguf_len']} tokens)")


def describe_mismatch(entry: dict) -> str:
    """One line naming a mismatch: the case, what differs, and the first differing token."""
    name = repr(entry["case"])
    if "refused" in entry:
        return f"{name}: {entry['refused']}"
    tokens = f"; {_tokens_line(entry['tokens'])}" if "tokens" in entry else ""
    if "template" in entry:
        t = entry["template"]
        return (f"{name}: the chat template renders differently from char {t['char']}: HF {t['hf']!r} vs GGUF "
                f"{t['gguf']!r}{tokens}")
    bos = entry.get("bos")
    if bos and bos["kind"] == "double BOS":
        return (f"{name}: double BOS: llama.cpp puts BOS {bos['token']!r} first (the GGUF says add_bos_token) and the "
                f"template writes another at token {bos['template_bos_at']}{tokens}; write {{{{ bos_token }}}} "
                "first in the template, nothing before it")
    if bos:
        return (f"{name}: llama.cpp puts BOS {bos['token']!r} before the chat (the GGUF says add_bos_token) that "
                f"training never feeds, since the HF folder adds none and the template writes none{tokens}; "
                "reconvert the GGUF from the HF folder it was trained from")
    t = entry["tokens"]
    return (f"{name}: same text, token ids differ from position {t['position']}: HF {t['hf']} {t['hf_ids']} vs "
            f"GGUF {t['gguf']} {t['gguf_ids']} ({t['hf_len']} vs {t['gguf_len']} tokens)")


def compare_chat(gguf_path: str | os.PathLike, tokenizer, cases: Sequence[Case], *, per_example: bool = False,
                 max_reported: int | None = None) -> dict:
    """Render and tokenize every case on both sides. Counts are per case, or per conversation with `per_example`
    (a conversation counts as matching only when all its cases do). Returns n, template_matches, token_matches,
    mismatched, ok, embedded_template, the mismatches (the first `max_reported`) and `first` (one line)."""
    llm = open_gguf(gguf_path, vocab_only=True)
    try:
        template = embedded_template(llm, str(gguf_path))
        entries = [(case, _compare_case(tokenizer, llm, case, str(gguf_path))) for case in cases]
    finally:
        llm.close()
    units: dict = {}  # unit -> [text same, ids same]
    for index, (case, entry) in enumerate(entries):
        unit = units.setdefault(case.example if per_example else index, [True, True])
        if entry is not None:
            unit[0] &= "template" not in entry and "refused" not in entry
            unit[1] &= "tokens" not in entry and "refused" not in entry and "bos" not in entry
    mismatches = [(entry | {"example": case.example}) if case.example is not None else entry
                  for case, entry in entries if entry is not None]
    mismatched = sum(1 for text_same, ids_same in units.values() if not (text_same and ids_same))
    return {"n": len(units), "template_matches": sum(text for text, _ in units.values()),
            "token_matches": sum(ids for _, ids in units.values()), "mismatched": mismatched, "ok": not mismatches,
            "embedded_template": template, "mismatches": mismatches[:max_reported],
            "first": describe_mismatch(mismatches[0]) if mismatches else None}


__all__ = ["Case", "PROBES", "chat_cases", "compare_chat", "conversation_cases", "describe_mismatch"]
