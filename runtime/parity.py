"""Parity: the eval conversations, chat-rendered, must tokenize the same in HF and in the GGUF.

A converter that got the pre-tokenizer regex, a special token or the template slightly wrong produces a GGUF that
loads and talks, just worse than the HF model it came from; this is where that shows. transformers is imported
here, lazily, and only when the user passes `--hf`: the laptop install has no transformers.
Two separate facts are checked: the template renders the same text in both, and the same text gives the same ids.
Differences are reported with their position and pieces, never normalised away.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from edgeft.errors import EdgeftError
from runtime.generate import merge_system, render_chat, token_text
from runtime.load import open_gguf

MAX_REPORTED = 10


def _hf_tokenizer(hf_dir: Path):
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise EdgeftError("--hf needs transformers (`pip install 'edgeft[train]'`); drop --hf to skip parity") from exc
    if not (hf_dir / "tokenizer_config.json").is_file() and not (hf_dir / "tokenizer.json").is_file():
        raise EdgeftError(f"--hf {hf_dir}: no tokenizer files there; pass the HF model folder the GGUF came from")
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    from convert.vocab.hf_tokenizer import match_llama_cpp

    # Tokenize as edgeft trained: where transformers' own pipeline differs from llama.cpp's, say so, then align.
    note = match_llama_cpp(tokenizer, hf_dir)
    if note:
        import warnings

        warnings.warn(note)
    return tokenizer


def _first_difference(a: Sequence, b: Sequence) -> int:
    for index, (left, right) in enumerate(zip(a, b)):
        if left != right:
            return index
    return min(len(a), len(b))


def check_parity(gguf_path: str | os.PathLike, hf_dir: str | os.PathLike,
                 conversations: Sequence[Sequence[dict]]) -> dict:
    """Compare HF and GGUF on each conversation (full, gold answers included, no generation prompt)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise EdgeftError(f"--hf {hf_dir}: not a folder; pass the HF model folder the GGUF was converted from")
    tokenizer = _hf_tokenizer(hf_dir)
    llm = open_gguf(gguf_path, vocab_only=True)
    text_matches = token_matches = mismatched = 0
    mismatches: list[dict] = []
    for index, messages in enumerate(conversations):
        try:
            hf_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        except Exception as refused:  # jinja2 TemplateError from raise_exception(): e.g. Gemma has no system role
            if not any(m["role"] == "system" for m in messages):
                raise EdgeftError(f"--hf {hf_dir}: its chat template refused eval example {index} ({refused})") \
                    from refused
            # The eval prompts do what generate.render_chat does for such templates: fold system into user.
            messages = merge_system(messages)
            hf_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
        gguf_text = render_chat(llm, messages, add_generation_prompt=False, path=str(gguf_path))
        hf_ids = list(tokenizer.encode(hf_text, add_special_tokens=False))
        gguf_ids = llm.tokenize(hf_text.encode("utf-8"), add_bos=False, special=True)
        text_same, ids_same = hf_text == gguf_text, hf_ids == gguf_ids
        text_matches += text_same
        token_matches += ids_same
        mismatched += not (text_same and ids_same)
        if (not text_same or not ids_same) and len(mismatches) < MAX_REPORTED:
            entry: dict = {"example": index}
            if not text_same:
                at = _first_difference(hf_text, gguf_text)
                entry["template"] = {"char": at, "hf": hf_text[max(0, at - 20):at + 40],
                                     "gguf": gguf_text[max(0, at - 20):at + 40]}
            if not ids_same:
                at = _first_difference(hf_ids, gguf_ids)
                entry["tokens"] = {
                    "position": at, "hf_len": len(hf_ids), "gguf_len": len(gguf_ids),
                    "hf": [tokenizer.convert_ids_to_tokens(int(i)) for i in hf_ids[at:at + 5]],
                    "gguf": [token_text(llm, i) for i in gguf_ids[at:at + 5]],
                    "hf_ids": hf_ids[at:at + 5], "gguf_ids": gguf_ids[at:at + 5]}
            mismatches.append(entry)
    llm.close()
    total = len(conversations)
    return {"hf": str(hf_dir), "n": total, "template_matches": text_matches, "token_matches": token_matches,
            "mismatched": mismatched, "ok": not mismatched, "mismatches": mismatches}
