"""`edgeft eval --hf`: the eval conversations, chat-rendered, must render and tokenize the same in HF and the GGUF.

A converter that got the pre-tokenizer regex, a special token or the template slightly wrong produces a GGUF that
loads and talks, just worse than the HF model it came from; this is where that shows. transformers is imported
(inside the one tokenizer loader, `runtime.hf_tokenizer.load_hf_tokenizer`, which training uses too), and
only when the user passes `--hf`: the laptop install has no transformers.
The comparison is the release's too (`runtime.chat_parity`); this module loads the HF tokenizer and counts per eval
example: each is checked whole (gold answer included) and as the prompt eval feeds (with the generation prompt).
Differences are reported with their position and pieces, never normalised away.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from runtime.hf_tokenizer import load_hf_tokenizer
from runtime.chat_parity import compare_chat, conversation_cases

MAX_REPORTED = 10


def check_parity(gguf_path: str | os.PathLike, hf_dir: str | os.PathLike,
                 conversations: Sequence[Sequence[dict]]) -> dict:
    """Compare HF and GGUF on each conversation (full, gold answers included) and its prompt; counts per example."""
    hf_dir = Path(hf_dir)
    # The tokenizer training loaded (`runtime.hf_tokenizer.load_hf_tokenizer`), loaded the same way.
    result = compare_chat(gguf_path, load_hf_tokenizer(hf_dir), conversation_cases(conversations), per_example=True,
                          max_reported=MAX_REPORTED)
    return {"hf": str(hf_dir), **{key: result[key] for key in ("n", "template_matches", "token_matches",
                                                                 "mismatched", "ok", "mismatches", "first")}}
