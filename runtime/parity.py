"""`edgeft eval --hf`: the eval conversations, chat-rendered, must render and tokenize the same in HF and the GGUF.

A converter that got the pre-tokenizer regex, a special token or the template slightly wrong produces a GGUF that
loads and talks, just worse than the HF model it came from; this is where that shows. transformers is imported
here, lazily, and only when the user passes `--hf`: the laptop install has no transformers.
The comparison is the release's too (`runtime.chat_parity`); this module loads the HF tokenizer and counts per eval
example: each is checked whole (gold answer included) and as the prompt eval feeds (with the generation prompt).
Differences are reported with their position and pieces, never normalised away.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from edgeft.errors import EdgeftError
from runtime.chat_parity import compare_chat, conversation_cases

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


def check_parity(gguf_path: str | os.PathLike, hf_dir: str | os.PathLike,
                 conversations: Sequence[Sequence[dict]]) -> dict:
    """Compare HF and GGUF on each conversation (full, gold answers included) and its prompt; counts per example."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise EdgeftError(f"--hf {hf_dir}: not a folder; pass the HF model folder the GGUF was converted from")
    result = compare_chat(gguf_path, _hf_tokenizer(hf_dir), conversation_cases(conversations), per_example=True,
                          max_reported=MAX_REPORTED)
    return {"hf": str(hf_dir), **{key: result[key] for key in ("n", "template_matches", "token_matches",
                                                                 "mismatched", "ok", "mismatches", "first")}}
