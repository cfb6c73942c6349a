"""Chat parity, end to end: what training rendered and tokenized against what the GGUF renders and feeds the model.

Each case is one conversation and whether the generation prompt is added. The HF side is a tokenizer the caller
loaded (transformers' `apply_chat_template`, then `encode` without special tokens, as the label mask does); the GGUF
side is its embedded template through llama-cpp-python (`runtime.generate.render_chat`) and the ids runtime feeds
the model (`prompt_tokens`: llama.cpp's tokenizer, BOS where the GGUF asks for one and the template wrote none).
Any difference in text or ids is a mismatch; `first` names the first one in one line.

No transformers import: the tokenizer object comes from the caller (edgeft's loader in the release).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

from edgeft.errors import EdgeftError
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


def chat_cases(conversations: Sequence[Sequence[dict]] = (), limit: int = 8) -> list[Case]:
    """The fixed probes, then up to `limit` of `conversations`: each whole, and its prompt with the generation
    prompt (as eval and serving render it) when it ends with an assistant turn."""
    cases = [Case(name, messages, prompt) for name, messages, prompt in PROBES]
    for index, messages in enumerate(list(conversations)[:limit]):
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        cases.append(Case(f"conversation {index}", messages, False))
        if messages[-1]["role"] == "assistant" and len(messages) > 1:
            cases.append(Case(f"conversation {index}, generation prompt", messages[:-1], True))
    return cases


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


def describe_mismatch(entry: dict) -> str:
    """One line naming a mismatch: the case, then where the text or the ids part."""
    if "refused" in entry:
        return f"{entry['case']!r}: {entry['refused']}"
    if "template" in entry:
        t = entry["template"]
        return (f"{entry['case']!r}: the chat template renders differently from char {t['char']}: "
                f"HF {t['hf']!r} vs GGUF {t['gguf']!r}")
    if "bos_only" in entry:
        return (f"{entry['case']!r}: llama.cpp puts BOS {entry['bos_only']!r} before the rendered chat (the GGUF says "
                "add_bos_token) and training never saw it, since the template writes none; start the template with "
                "{{ bos_token }} so training sees it too")
    t = entry["tokens"]
    return (f"{entry['case']!r}: same text, token ids differ from position {t['position']}: HF {t['hf']} "
            f"{t['hf_ids']} vs GGUF {t['gguf']} {t['gguf_ids']} ({t['hf_len']} vs {t['gguf_len']} tokens)")


def compare_chat(gguf_path: str | os.PathLike, tokenizer, cases: Sequence[Case]) -> dict:
    """Render and tokenize every case on both sides; returns counts, the mismatches and `first` (one line)."""
    llm = open_gguf(gguf_path, vocab_only=True)
    try:
        template = embedded_template(llm, str(gguf_path))
        text_matches = token_matches = 0
        mismatches: list[dict] = []
        for case in cases:
            refused = _refusals(tokenizer, llm, case, str(gguf_path))
            if refused is not None:
                if refused:  # one side renders what the other refuses; both refusing is agreement
                    mismatches.append({"case": case.name, "refused": refused})
                else:
                    text_matches += 1
                    token_matches += 1
                continue
            hf_text, messages = _hf_render(tokenizer, case)
            gguf_text = render_chat(llm, messages, add_generation_prompt=case.add_generation_prompt,
                                    path=str(gguf_path))
            hf_ids = [int(i) for i in tokenizer.encode(hf_text, add_special_tokens=False)]
            gguf_ids = [int(i) for i in prompt_tokens(llm, gguf_text)]
            text_same, ids_same = hf_text == gguf_text, hf_ids == gguf_ids
            text_matches += text_same
            token_matches += ids_same
            if text_same and ids_same:
                continue
            entry: dict = {"case": case.name, "add_generation_prompt": case.add_generation_prompt}
            if not text_same:
                at = _first_difference(hf_text, gguf_text)
                entry["template"] = {"char": at, "hf": hf_text[max(0, at - 20):at + 40],
                                     "gguf": gguf_text[max(0, at - 20):at + 40]}
            if not ids_same and text_same and gguf_ids[1:] == hf_ids and gguf_ids[0] == llm.token_bos():
                entry["bos_only"] = token_text(llm, gguf_ids[0])
            if not ids_same:
                at = _first_difference(hf_ids, gguf_ids)
                entry["tokens"] = {
                    "position": at, "hf_len": len(hf_ids), "gguf_len": len(gguf_ids),
                    "hf": tokenizer.convert_ids_to_tokens(hf_ids[at:at + SHOWN]),
                    "gguf": [token_text(llm, i) for i in gguf_ids[at:at + SHOWN]],
                    "hf_ids": hf_ids[at:at + SHOWN], "gguf_ids": gguf_ids[at:at + SHOWN]}
            mismatches.append(entry)
    finally:
        llm.close()
    return {"n": len(cases), "template_matches": text_matches, "token_matches": token_matches,
            "ok": not mismatches, "embedded_template": template, "mismatches": mismatches,
            "first": describe_mismatch(mismatches[0]) if mismatches else None}


__all__ = ["Case", "PROBES", "chat_cases", "compare_chat", "describe_mismatch"]
