"""SentencePiece (tokenizer.model) for Llama 2, Mistral v0.1, Phi-3, Gemma.

Piece types come from the model proto itself; sentencepiece numbers them exactly as GGUF does (normal, unknown,
control, user-defined, unused, byte). tokenizer.json / tokenizer_config.json may add tokens on top (ids past the
SPM vocabulary; special ones become control tokens, others user-defined); for ids the SPM model already has, its
own piece type is kept, as llama.cpp's converter does.
"""

from __future__ import annotations

from pathlib import Path

from convert.vocab import CONTROL, UNUSED, USER_DEFINED, Vocab, read_json
from convert.common.errors import EdgeftError


def _added_tokens(model_dir: Path) -> dict[int, tuple[str, bool]]:
    """id -> (text, special) from tokenizer.json's added_tokens and tokenizer_config.json's added_tokens_decoder."""
    found: dict[int, tuple[str, bool]] = {}
    if (model_dir / "tokenizer.json").exists():
        for added in read_json(model_dir / "tokenizer.json").get("added_tokens", []):
            found[int(added["id"])] = (added["content"], bool(added.get("special")))
    if (model_dir / "tokenizer_config.json").exists():
        decoder = read_json(model_dir / "tokenizer_config.json").get("added_tokens_decoder") or {}
        for token_id, info in decoder.items():
            found[int(token_id)] = (info["content"], bool(info.get("special")))
    return found


def load_spm(model_dir: Path) -> Vocab:
    from sentencepiece import sentencepiece_model_pb2

    path = model_dir / "tokenizer.model"
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise EdgeftError(f"{path}: not a SentencePiece model ({exc}); re-download tokenizer.model") from exc
    if proto.trainer_spec.model_type not in (1, 2):  # 1 = unigram, 2 = bpe; llama.cpp's SPM handles both
        raise EdgeftError(f"{path}: SentencePiece model type {proto.trainer_spec.model_type} is not supported")
    tokens = [piece.piece for piece in proto.pieces]
    scores = [float(piece.score) for piece in proto.pieces]
    types = [int(piece.type) for piece in proto.pieces]

    for token_id, (text, special) in sorted(_added_tokens(model_dir).items()):
        kind = CONTROL if special else USER_DEFINED
        if token_id < len(tokens):
            if tokens[token_id] != text:
                raise EdgeftError(f"{model_dir}: added token {text!r} claims id {token_id}, which is "
                                  f"{tokens[token_id]!r} in tokenizer.model; the tokenizer files disagree")
            # As llama.cpp's own converter: the SPM model's type wins (a user-defined piece stays user-defined, so
            # llama.cpp matches it in plain text as transformers does); only unused slots take the added token's.
            if types[token_id] == UNUSED:
                types[token_id] = kind
            continue
        while len(tokens) < token_id:  # a gap: keep ids aligned with the embedding rows
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(UNUSED)
        tokens.append(text)
        scores.append(-1000.0)
        types.append(kind)

    normalizer = proto.normalizer_spec
    return Vocab(model="llama", tokens=tokens, types=types, scores=scores,
                 add_space_prefix=bool(normalizer.add_dummy_prefix),
                 remove_extra_whitespaces=bool(normalizer.remove_extra_whitespaces))
