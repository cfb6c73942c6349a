"""Byte-level BPE from tokenizer.json (Llama 3, Qwen2/2.5/3, GPT-2 style, SmolLM)."""

from __future__ import annotations

from pathlib import Path

from convert.vocab import CONTROL, NORMAL, UNUSED, USER_DEFINED, Vocab, read_json
from convert.vocab.pretokenizer import detect_pretokenizer
from convert.common.errors import EdgeftError


def _merge_text(merge) -> str:
    # tokenizers >= 0.20 may store merges as [left, right] pairs; GGUF wants "left right".
    return merge if isinstance(merge, str) else " ".join(merge)


def load_bpe(model_dir: Path, *, pretokenizer: str | None = None) -> Vocab:
    path = model_dir / "tokenizer.json"
    data = read_json(path)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise EdgeftError(f"{path}: tokenizer model {model.get('type')!r} is not supported; expected byte-level BPE "
                          "or a SentencePiece tokenizer.model")
    if model.get("byte_fallback"):
        raise EdgeftError(f"{path}: SentencePiece-style BPE (byte_fallback) without tokenizer.model; "
                          "add the original tokenizer.model to the folder")
    pre = detect_pretokenizer(data, source=str(path), override=pretokenizer)

    by_id: dict[int, tuple[str, int]] = {i: (tok, NORMAL) for tok, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        # Special added tokens are control tokens; plain added ones are matched verbatim (user-defined).
        by_id[int(added["id"])] = (added["content"], CONTROL if added.get("special") else USER_DEFINED)
    size = max(by_id) + 1 if by_id else 0
    tokens, types = [], []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", UNUSED))
        tokens.append(text)
        types.append(kind)
    return Vocab(model="gpt2", tokens=tokens, types=types, pre=pre,
                 merges=[_merge_text(m) for m in model.get("merges", [])])
