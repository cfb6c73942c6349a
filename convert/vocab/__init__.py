"""Tokenizers -> GGUF `tokenizer.*` metadata: byte-level BPE (tokenizer.json) or SentencePiece (tokenizer.model).

    vocab = load_vocab(model_dir, n_vocab=embedding_rows)
    write_vocab(gguf_writer, vocab)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from convert.common.errors import EdgeftError

# GGUF token types (same numbering as sentencepiece's piece types and gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] | None = None
    pre: str | None = None
    add_space_prefix: bool | None = None
    remove_extra_whitespaces: bool | None = None
    special_ids: dict[str, int] = field(default_factory=dict)  # bos/eos/unk/pad/eot -> id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None

    def pad_to(self, n_vocab: int, source: str) -> None:
        """Match the embedding's row count: llama.cpp requires one token per row. Added tokens past the embedding
        (Gemma 3's <image_soft_token> after 262144 rows) have no row to run with: dropped with a warning, as
        llama.cpp's converter does (it reads ids below the config's vocab_size only). Anything else is refused."""
        extra = range(n_vocab, len(self.tokens))
        if extra and not any(self.types[i] not in (CONTROL, USER_DEFINED) or i in self.special_ids.values()
                             for i in extra):
            import warnings

            warnings.warn(f"{source}: added tokens {self.tokens[n_vocab:n_vocab + 4]} have ids past the embedding's "
                          f"{n_vocab} rows; they are left out of the GGUF, as llama.cpp's converter does")
            for values in (self.tokens, self.types, self.scores):
                if values is not None:
                    del values[n_vocab:]
        if len(self.tokens) > n_vocab:
            raise EdgeftError(
                f"{source}: tokenizer has {len(self.tokens)} tokens but the embedding has {n_vocab} rows; "
                "the tokenizer does not belong to these weights")
        for i in range(len(self.tokens), n_vocab):
            self.tokens.append(f"[PAD{i}]")
            self.types.append(UNUSED)
            if self.scores is not None:
                self.scores.append(-1000.0)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgeftError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); fix or re-download it") from exc


def load_vocab(model_dir: str | os.PathLike, *, pretokenizer: str | None = None) -> Vocab:
    """Read the model folder's tokenizer. SentencePiece when tokenizer.model exists (as llama.cpp's own converter
    prefers), else byte-level BPE from tokenizer.json."""
    from convert.vocab import bpe, special, spm

    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.model").exists():
        vocab = spm.load_spm(model_dir)
    elif (model_dir / "tokenizer.json").exists():
        vocab = bpe.load_bpe(model_dir, pretokenizer=pretokenizer)
    else:
        raise EdgeftError(
            f"{model_dir}: no tokenizer (tokenizer.json or tokenizer.model); copy the base model's tokenizer "
            "files into this folder")
    special.apply_special_tokens(vocab, model_dir)
    return vocab


def write_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    ids = vocab.special_ids
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id),
                     ("eot", writer.add_eot_token_id)):
        if key in ids:
            add(ids[key])
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.remove_extra_whitespaces is not None:
        writer.add_remove_extra_whitespaces(vocab.remove_extra_whitespaces)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


__all__ = ["Vocab", "load_vocab", "write_vocab"]
