"""Make a loaded Hugging Face tokenizer split text the way llama.cpp will split it with the vocabulary we convert.

Training tokenizes with transformers, serving with llama.cpp; the two must give the same ids or the fine-tune is
served text it never saw. For SentencePiece folders (tokenizer.model) llama.cpp does what the sentencepiece library
does: "▁" before each stretch of text between special tokens (when the model's add_dummy_prefix is set), every
space replaced by "▁", then the vocabulary's merges over the whole stretch. The tokenizer.json the Llama-2-family
repos ship encodes exactly that (normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer), and transformers
runs it as-is for most model types. For model_type llama, though, transformers 5 rebuilds LlamaTokenizer with a
Metaspace pre-tokenizer, and that differs in two ways: `legacy: false` (Llama 2's own config) gives
prepend_scheme="first", so no "▁" after a special token ("[/INST] Hi" -> "▁Hi" in llama.cpp, "Hi" in HF); and
Metaspace never doubles a prefix onto text that already starts with a space (" a" -> "▁▁a" in sentencepiece and
llama.cpp, "▁a" in HF). Measured on the 240 strings of tests/corpus.py with the Llama-2 fixture: 182 agree as
transformers loads it (legacy true or false), 240 after `match_llama_cpp`.

Then the BOS: llama.cpp puts one before a chat when the GGUF says add_bos_token and the template did not write it
first; `chat_ids` feeds the same ids on the HF side (training's mask, the data check, imatrix, chat parity), from
the rule the converter writes into the GGUF (`convert.vocab.special`).

`load_hf_tokenizer` is the one loader of a folder's HF tokenizer: training, the data tools, imatrix, merge, the
release's chat parity and `edgeft eval --hf` all take it from here, so each loads the same tokenizer the same way
(offline, fast only, aligned). transformers is imported inside it only: convert/ and runtime/ stay importable on a
laptop install without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from convert.common.errors import EdgeftError

SPACE = "▁"
# What AutoTokenizer can build a tokenizer from; a folder holding none of them is not a tokenizer folder.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _metaspace_in(pre_tokenizer) -> bool:
    from tokenizers import pre_tokenizers

    if pre_tokenizer is None:
        return False
    if isinstance(pre_tokenizer, pre_tokenizers.Metaspace):
        return True
    return "Metaspace" in repr(pre_tokenizer)  # inside a Sequence, which does not expose its members


def _normalizer_spec(model_dir: Path):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    path = model_dir / "tokenizer.model"
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise EdgeftError(f"{path}: not a SentencePiece model ({exc}); re-download tokenizer.model") from exc
    return proto.normalizer_spec


def match_llama_cpp(tokenizer, model_dir: str | Path) -> str | None:
    """Give `tokenizer` (a fast HF tokenizer loaded from `model_dir`) llama.cpp's text pipeline where transformers
    built a different one. Returns a one-line note of what changed, None when nothing had to; raises EdgeftError
    (why, and what to do) when the two cannot be made to agree."""
    model_dir = Path(model_dir)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not (model_dir / "tokenizer.model").is_file():
        return None  # byte-level BPE: the converter reads the same tokenizer.json transformers runs
    if not _metaspace_in(backend.pre_tokenizer):
        return None  # the repo's own tokenizer.json pipeline (Prepend + Replace), which is llama.cpp's
    spec = _normalizer_spec(model_dir)
    where = f"{model_dir}/tokenizer.model"
    if spec.precompiled_charsmap:
        raise EdgeftError(f"{where}: SentencePiece normalizes text with rule {spec.name or 'custom'!r}, which "
                          "llama.cpp does not apply, so training and serving would tokenize differently; use a "
                          "model whose tokenizer.model has the identity normalization (as Llama 2 / Mistral ship)")
    if backend.normalizer is not None:
        raise EdgeftError(f"{model_dir}: transformers built a Metaspace tokenizer with its own normalizer "
                          f"({backend.normalizer}), which edgeft cannot map onto llama.cpp's SentencePiece rules; "
                          "ship a tokenizer.json with the Llama-2-style Prepend/Replace normalizer instead")
    from tokenizers import decoders, normalizers

    prefix = bool(spec.add_dummy_prefix)
    backend.normalizer = normalizers.Sequence(
        ([normalizers.Prepend(SPACE)] if prefix else []) + [normalizers.Replace(" ", SPACE)])
    backend.pre_tokenizer = None
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return (f"{model_dir}: transformers' rebuilt SentencePiece pipeline (Metaspace) replaced by llama.cpp's "
            f"(add_dummy_prefix={prefix}), so training tokenizes as the GGUF will")




def llama_cpp_bos_id(tokenizer) -> int | None:
    """The id of the BOS llama.cpp puts before a chat with the GGUF converted from the folder `tokenizer` was loaded
    from (`convert.vocab.special.bos_llama_cpp_adds`); None when it puts none, or when the tokenizer comes from no
    folder (then no GGUF of ours says otherwise). Read once per tokenizer: training asks for every example."""
    cached = getattr(tokenizer, "_llama_cpp_bos", False)
    if cached is not False:
        return cached
    from convert.vocab.special import bos_llama_cpp_adds

    name = getattr(tokenizer, "name_or_path", None)
    folder = Path(name) if name else None
    bos_id = None
    if folder is not None and folder.is_dir():
        bos_text = bos_llama_cpp_adds(folder)
        if bos_text is not None:
            bos_id = tokenizer.get_vocab().get(bos_text)
            if bos_id is None:
                raise EdgeftError(f"{folder}: bos_token {bos_text!r} is not in the tokenizer's vocabulary; the "
                                  "tokenizer files disagree")
    tokenizer._llama_cpp_bos = bos_id
    return bos_id


# Tokens llama.cpp makes CONTROL by their text whatever type the GGUF gives them ("control-looking token ... its
# type will be overridden", llama_vocab::impl::load: the end-of-turn, end-of-message, fill-in-the-middle and
# end-of-generation names), so training must not parse them from message text either.
LLAMA_CPP_CONTROL_NAMES = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>", "_<EOT>",
    "[EOT]", "[EOS]", "[PAD]", "<｜end▁of▁sentence｜>", "<end_of_utterance>", "<|eom_id|>", "<eos>", "<turn|>",
    "<|tool_response>", "[e~[", "<|return|>", "<|call|>", "<|calls|>", "<|flush|>", "<|file_sep|>",
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "▁<PRE>", "<｜fim▁begin｜>", "<|code_prefix|>",
    "<|prefix|>", "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "▁<SUF>", "<｜fim▁hole｜>",
    "<|code_suffix|>", "<|suffix|>", "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "▁<MID>",
    "<｜fim▁end｜>", "<|code_middle|>", "<|middle|>", "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"))


def _converted_types(tokenizer) -> list[int] | None:
    """Token types the converter gives the folder's vocabulary (which added tokens become CONTROL in the GGUF);
    None when the tokenizer comes from no folder the converter reads."""
    from convert.vocab import load_vocab

    name = getattr(tokenizer, "name_or_path", None)
    if not name or not Path(name).is_dir():
        return None
    try:
        return list(load_vocab(name).types)
    except EdgeftError:
        return None


def hf_specials(tokenizer) -> list:
    """The tokenizer's added tokens as `convert.vocab.chat_spans.Special`s, read once per tokenizer. A control token
    is one llama.cpp, which serves the model, treats as control: CONTROL (or UNKNOWN) as the converter writes it, or
    one of the names llama.cpp promotes. Not the tokenizer's own `special` flag: transformers marks bos/eos/unk
    special where the files do not (Phi-3's `</s>`), and Gemma's user-defined `<start_of_turn>` special too, which
    llama.cpp matches in any text."""
    cached = getattr(tokenizer, "_edgeft_specials", None)
    if cached is not None:
        return cached
    from convert.vocab import CONTROL, UNKNOWN
    from convert.vocab.chat_spans import Special

    types = _converted_types(tokenizer)
    found = []
    for token, added in sorted(getattr(tokenizer, "added_tokens_decoder", {}).items()):
        control = types[token] in (CONTROL, UNKNOWN) if types is not None and token < len(types) else added.special
        control = control or added.content in LLAMA_CPP_CONTROL_NAMES
        found.append((Special(added.content, control, bool(added.lstrip), bool(added.rstrip), emit=True), int(token)))
    tokenizer._edgeft_specials = [special for special, _ in found]
    tokenizer._edgeft_special_ids = {special.text: token for special, token in reversed(found)}
    return tokenizer._edgeft_specials


def _text_backend(tokenizer):
    """A copy of the tokenizer's backend that reads every control token's text as text (encode_special_tokens on,
    and each control token marked special: the files may call one plain that the GGUF calls CONTROL, such as Phi-3's
    `</s>`, and the backend would match it in any text). Made once per tokenizer."""
    cached = getattr(tokenizer, "_edgeft_text_backend", None)
    if cached is not None:
        return cached
    from tokenizers import AddedToken, Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    current = backend.get_added_tokens_decoder()
    backend.add_special_tokens([AddedToken(added.content, special=True, lstrip=added.lstrip, rstrip=added.rstrip,
                                           normalized=added.normalized, single_word=added.single_word)
                                for added in current.values()
                                if any(s.control and s.text == added.content for s in hf_specials(tokenizer))])
    backend.encode_special_tokens = True
    tokenizer._edgeft_text_backend = backend
    return backend


def _encode_as_text(tokenizer, text: str):
    """`text` encoded with no control token parsed (added tokens that are not control tokens still are, as with
    llama.cpp's parse_special=false): (ids, offsets)."""
    encoding = _text_backend(tokenizer).encode(text, add_special_tokens=False)
    return list(encoding.ids), [tuple(pair) for pair in encoding.offsets]


def chat_encoding(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """(ids, character offsets) of rendered chat `text` without the BOS: the special tokens the template wrote,
    parsed; a control token's text that came from a message, tokenized as text (`convert.vocab.chat_spans`; `text`
    is then the renderer's ChatText, and a plain str is the caller's own markup)."""
    from convert.vocab.chat_spans import ChatText, Special, forged, original_offset, require_spans, split_controls

    table = hf_specials(tokenizer) if isinstance(text, ChatText) else []
    controls = [special.text for special in table if special.control]
    if isinstance(text, ChatText):
        require_spans(text, controls, "the conversation")
    if not isinstance(text, ChatText) or forged(text, controls) is None:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [int(i) for i in encoded["input_ids"]], [tuple(pair) for pair in encoded["offset_mapping"]]
    ids: list[int] = []
    offsets: list[tuple[int, int]] = []
    for piece, ranges in split_controls(text, text.content_spans, table):
        if isinstance(piece, Special):
            ids.append(tokenizer._edgeft_special_ids[piece.text])
            offsets.append(ranges[0])
            continue
        piece_ids, piece_offsets = _encode_as_text(tokenizer, piece)
        ids += piece_ids
        offsets += [(original_offset(ranges, lo), original_offset(ranges, hi - 1) + 1 if hi > lo
                     else original_offset(ranges, lo)) for lo, hi in piece_offsets]
    return ids, offsets


def chat_ids(tokenizer, text: str) -> list[int]:
    """The ids training feeds for rendered chat `text`, which are those llama.cpp feeds: the special tokens the
    template wrote, parsed (message text never yields one, `chat_encoding`), and the BOS the GGUF adds in front
    (`convert.vocab.special.bos_first`)."""
    from convert.vocab.special import bos_first

    return bos_first(chat_encoding(tokenizer, text)[0], llama_cpp_bos_id(tokenizer))


def load_hf_tokenizer(model_dir: str | Path):
    """A fast (offset-capable) HF tokenizer from the local folder `model_dir`, never a hub download, splitting text
    as llama.cpp will with the converted vocabulary (`match_llama_cpp`); EdgeftError (one line) when transformers is
    missing, the folder holds no tokenizer or one that does not load, only a slow one, or one llama.cpp cannot match."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:  # pragma: no cover - the train extra is missing
        raise EdgeftError("reading a tokenizer needs transformers: pip install 'edgeft[train]'") from exc
    path = Path(model_dir)
    if not path.is_dir():
        what = "is a file, not a model folder" if path.exists() else "no such model folder"
        raise EdgeftError(f"{model_dir}: {what}; pass the folder holding tokenizer.json")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise EdgeftError(f"{model_dir}: no tokenizer in this folder (none of {', '.join(TOKENIZER_FILES)}); pass the "
                          "model folder that holds tokenizer.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a broken folder
        # Its messages span several lines (a numbered list of what it tried): the first says what failed.
        problem = (str(exc).strip().splitlines() or [""])[0].rstrip(" :")
        raise EdgeftError(f"{model_dir}: cannot load a tokenizer ({type(exc).__name__}: {problem}); pass a model "
                          "folder whose tokenizer.json loads") from exc
    # Training's label mask needs offsets, and a slow tokenizer is not aligned here: one rule for every caller.
    if not getattr(tokenizer, "is_fast", True):
        raise EdgeftError(f"{model_dir}: only a slow tokenizer is available; edgeft needs tokenizer.json")
    note = match_llama_cpp(tokenizer, path)
    if note:
        logging.getLogger("edgeft.tokenizer").info(note)
    return tokenizer


__all__ = ["TOKENIZER_FILES", "chat_encoding", "chat_ids", "hf_specials", "llama_cpp_bos_id", "load_hf_tokenizer", "match_llama_cpp"]
