"""A GGUF's `tokenizer.*` metadata back to Hugging Face tokenizer files: the inverse of convert.vocab.

What we write is faithful to the GGUF, i.e. to how llama.cpp tokenizes with it, and is what convert.vocab reads back
to the same metadata:
- byte-level BPE (`gpt2`): tokenizer.json with the vocabulary, the merges and the pre-tokenizer definition that
  convert.vocab.pretokenizer maps to `tokenizer.ggml.pre` (its table read backwards);
- SentencePiece (`llama`): tokenizer.model (pieces, scores, piece types, normalizer flags) for the converter, and
  tokenizer.json for transformers as its Llama/Mistral/Gemma files have it: BPE with byte fallback, merges ranked by
  the merged piece's score (the order llama.cpp's SPM tokenizer merges in), and Prepend("▁") + Replace(" ", "▁") as
  the normalizer when add_space_prefix (llama.cpp puts the space before each piece of text between special tokens,
  as transformers runs a normalizer per piece between added tokens).
tokenizer_config.json names TokenizersBackend so transformers uses tokenizer.json as written instead of rebuilding
a tokenizer from its own defaults (LlamaTokenizer would put a Metaspace pre-tokenizer over a byte-level vocabulary).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import gguf

from convert.metadata import PHI3_NAME_MARKERS, PHI3_NOT_RSTRIPPED
from convert.vocab import BYTE, CONTROL, NORMAL, UNKNOWN, UNUSED, USER_DEFINED, Vocab
from convert.vocab.pretokenizer import IGNORE_MERGES, pretokenizer_definition
from convert.common.errors import EdgeftError

K = gguf.Keys.Tokenizer
SPECIAL_KEYS = {"bos": K.BOS_ID, "eos": K.EOS_ID, "unk": K.UNK_ID, "pad": K.PAD_ID, "eot": K.EOT_ID, "eom": K.EOM_ID}
# llama.cpp's defaults when a key is absent (llama-vocab.cpp): SPM adds BOS and a space prefix, BPE neither except
# for the pre-tokenizers listed; SPM's specials default to <unk>=0, <s>=1, </s>=2.
SPM_DEFAULT_IDS = {"unk": 0, "bos": 1, "eos": 2}
BPE_ADD_BOS_BY_DEFAULT = frozenset({"llama-bpe"})
# Token types that are AddedTokens in tokenizer.json (matched in text before the model runs, as llama.cpp does).
ADDED_TYPES = (CONTROL, USER_DEFINED, UNKNOWN)


@dataclass
class TokenizerFiles:
    """Everything written for the tokenizer: file name -> text (or bytes for tokenizer.model)."""

    files: dict[str, str | bytes] = field(default_factory=dict)
    special_ids: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def read_vocab(meta) -> Vocab:
    """The inverse of convert.vocab.write_vocab: a Vocab from the GGUF's tokenizer metadata."""
    model = meta.get(K.MODEL, None)
    if model not in ("gpt2", "llama"):
        raise EdgeftError(f"{meta.path}: tokenizer model {model!r} cannot be imported; supported: gpt2 (byte-level "
                          "BPE), llama (SentencePiece)")
    tokens = meta.array(K.LIST)
    types = meta.array(K.TOKEN_TYPE, [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise EdgeftError(f"{meta.path}: {len(tokens)} tokens but {len(types)} token types; the GGUF is damaged")
    spm = model == "llama"
    vocab = Vocab(model=model, tokens=tokens, types=types)
    if spm:
        vocab.scores = meta.array(K.SCORES, [0.0] * len(tokens))
        vocab.add_space_prefix = bool(meta.get(K.ADD_PREFIX, True))
        vocab.remove_extra_whitespaces = bool(meta.get(K.REMOVE_EXTRA_WS, False))
    else:
        vocab.pre = meta.get(K.PRE, None)
        if vocab.pre is None:
            raise EdgeftError(f"{meta.path}: no tokenizer.ggml.pre; llama.cpp falls back to 'default', which edgeft "
                              "cannot write as a tokenizer.json")
        pretokenizer_definition(vocab.pre, source=str(meta.path))  # refuse an unknown name before anything is written
        vocab.merges = meta.array(K.MERGES)
    for role, key in SPECIAL_KEYS.items():
        token_id = meta.get(key, SPM_DEFAULT_IDS.get(role) if spm else None)
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            vocab.special_ids[role] = int(token_id)
    vocab.add_bos = bool(meta.get(K.ADD_BOS, spm or vocab.pre in BPE_ADD_BOS_BY_DEFAULT))
    vocab.add_eos = bool(meta.get(K.ADD_EOS, False))
    vocab.chat_template = meta.get(K.CHAT_TEMPLATE, None)
    return vocab


def _rstrip_rule(model_name: str):
    """llama.cpp's one per-token strip rule (see convert.metadata): a Phi-3 name makes specials swallow the
    whitespace after them; written as rstrip on the AddedTokens so transformers does the same."""
    if not any(marker in model_name.lower() for marker in PHI3_NAME_MARKERS):
        return lambda text, kind: False
    return lambda text, kind: text == "</s>" or text not in PHI3_NOT_RSTRIPPED


def _added_tokens(vocab: Vocab, model_name: str) -> list[dict]:
    rstrip = _rstrip_rule(model_name)
    return [{"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": rstrip(text, kind),
             "normalized": False, "special": kind != USER_DEFINED}
            for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)) if kind in ADDED_TYPES]


def _post_processor(vocab: Vocab) -> dict | None:
    """TemplateProcessing adding BOS/EOS around a sequence, as add_bos/add_eos say (tokenizers' JSON form)."""
    ends = {role: vocab.special_ids.get(role) for role in ("bos", "eos")}
    use = {"bos": vocab.add_bos and ends["bos"] is not None, "eos": vocab.add_eos and ends["eos"] is not None}
    if not any(use.values()):
        return None

    def template(sequences: list[tuple[str, int]]) -> list[dict]:
        pieces = []
        for seq, type_id in sequences:
            if use["bos"]:
                pieces.append({"SpecialToken": {"id": vocab.tokens[ends["bos"]], "type_id": type_id}})
            pieces.append({"Sequence": {"id": seq, "type_id": type_id}})
            if use["eos"]:
                pieces.append({"SpecialToken": {"id": vocab.tokens[ends["eos"]], "type_id": type_id}})
        return pieces

    specials = {vocab.tokens[ends[role]]: {"id": vocab.tokens[ends[role]], "ids": [ends[role]],
                                           "tokens": [vocab.tokens[ends[role]]]} for role in use if use[role]}
    return {"type": "TemplateProcessing", "single": template([("A", 0)]), "pair": template([("A", 0), ("B", 1)]),
            "special_tokens": specials}


def _model_vocab(vocab: Vocab, warnings: list[str]) -> dict[str, int]:
    """text -> id for the BPE model. Placeholder rows (UNUSED) stay out: the converter pads them back as [PADn]."""
    by_text: dict[str, int] = {}
    lost = []
    for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)):
        if kind == UNUSED:
            continue
        if text in by_text:
            if kind not in ADDED_TYPES:
                lost.append(i)
            continue
        by_text[text] = i
    if lost:
        warnings.append(f"{len(lost)} tokens repeat another token's text (first id {lost[0]}); tokenizer.json can "
                        "hold one id per text, so those ids are never produced")
    return by_text


def _bpe_json(vocab: Vocab, model_name: str, source: str, warnings: list[str]) -> dict:
    merges = [merge.split(" ", 1) for merge in vocab.merges or []]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(vocab, model_name),
        "normalizer": None,
        "pre_tokenizer": pretokenizer_definition(vocab.pre, source=source),
        "post_processor": _post_processor(vocab),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": vocab.pre in IGNORE_MERGES,
                  "vocab": _model_vocab(vocab, warnings), "merges": merges},
    }


def spm_merges(vocab: Vocab) -> list[list[str]]:
    """Merges for a SentencePiece BPE vocabulary: every split of a normal piece into two normal pieces, ranked by the
    merged piece's score (best first, then lower id) — llama.cpp's SPM tokenizer merges the best-scoring pair first."""
    normal = {text: i for i, (text, kind) in enumerate(zip(vocab.tokens, vocab.types)) if kind == NORMAL}
    ranked = []
    for text, i in normal.items():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in normal and right in normal:
                ranked.append((-vocab.scores[i], i, normal[left], left, right))
    ranked.sort()
    return [[left, right] for *_, left, right in ranked]


def _spm_json(vocab: Vocab, model_name: str, warnings: list[str]) -> dict:
    replace = {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
    normalizer = ({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]}
                  if vocab.add_space_prefix else replace)
    decoders = [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}]
    if vocab.add_space_prefix:
        decoders.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    unk = vocab.special_ids.get("unk")
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": _added_tokens(vocab, model_name),
        "normalizer": normalizer,
        "pre_tokenizer": None,
        "post_processor": _post_processor(vocab),
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {"type": "BPE", "dropout": None, "unk_token": vocab.tokens[unk] if unk is not None else None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": BYTE in vocab.types, "ignore_merges": False,
                  "vocab": _model_vocab(vocab, warnings), "merges": spm_merges(vocab)},
    }


def spm_model_proto(vocab: Vocab, source: str) -> bytes:
    """tokenizer.model for the converter: the inverse of convert.vocab.spm.load_spm (pieces, scores, types and the
    normalizer flags it reads). Trained as BPE: the merge-by-score algorithm llama.cpp runs on any SPM GGUF."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    for text, score, kind in zip(vocab.tokens, vocab.scores, vocab.types):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, float(score), int(kind)
    trainer = proto.trainer_spec
    trainer.model_type = sentencepiece_model_pb2.TrainerSpec.BPE
    trainer.vocab_size = len(vocab.tokens)
    trainer.byte_fallback = BYTE in vocab.types
    unknown = [i for i, kind in enumerate(vocab.types) if kind == UNKNOWN]
    trainer.unk_id = unknown[0] if unknown else -1
    # sentencepiece wants distinct ids and control pieces for its bos/eos/pad; any other (Phi-3's <|end|> as EOS)
    # stays unnamed there: the converter takes the roles from tokenizer_config.json, not from this proto.
    used = {trainer.unk_id}
    for role in ("bos", "eos", "pad"):
        token_id = vocab.special_ids.get(role, -1)
        usable = token_id >= 0 and vocab.types[token_id] == CONTROL and token_id not in used
        setattr(trainer, f"{role}_id", token_id if usable else -1)
        used.add(token_id)
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(vocab.add_space_prefix)
    normalizer.remove_extra_whitespaces = bool(vocab.remove_extra_whitespaces)
    normalizer.escape_whitespaces = True
    data = proto.SerializeToString()
    try:
        sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception as exc:  # sentencepiece raises RuntimeError with its own message
        raise EdgeftError(f"{source}: the SentencePiece vocabulary does not form a valid tokenizer.model ({exc})") from None
    return data


def tokenizer_files(vocab: Vocab, *, model_name: str, context_length: int, source: str) -> TokenizerFiles:
    """tokenizer.json, tokenizer_config.json, chat_template.jinja (and tokenizer.model for SPM) for `vocab`."""
    from tokenizers import Tokenizer

    out = TokenizerFiles(special_ids=dict(vocab.special_ids))
    if vocab.model == "llama":
        tokenizer_json = _spm_json(vocab, model_name, out.warnings)
        out.files["tokenizer.model"] = spm_model_proto(vocab, source)
    else:
        tokenizer_json = _bpe_json(vocab, model_name, source, out.warnings)
    text = json.dumps(tokenizer_json, indent=2, ensure_ascii=False)
    try:
        Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises its own Exception subclass
        raise EdgeftError(f"{source}: the vocabulary does not form a valid tokenizer.json ({exc})") from None
    out.files["tokenizer.json"] = text

    def token(role: str) -> str | None:
        token_id = vocab.special_ids.get(role)
        return vocab.tokens[token_id] if token_id is not None else None

    config = {
        "tokenizer_class": "TokenizersBackend",
        "bos_token": token("bos"), "eos_token": token("eos"), "unk_token": token("unk"), "pad_token": token("pad"),
        "add_bos_token": vocab.add_bos, "add_eos_token": vocab.add_eos,
        "clean_up_tokenization_spaces": False,
        "model_max_length": context_length,
    }
    if vocab.chat_template:
        # In both places, as `edgeft merge` writes it: transformers reads the file first, llama.cpp's converter the
        # config first, so either agrees.
        out.files["chat_template.jinja"] = vocab.chat_template
        config["chat_template"] = vocab.chat_template
    out.files["tokenizer_config.json"] = json.dumps(config, indent=2, ensure_ascii=False) + "\n"
    return out
