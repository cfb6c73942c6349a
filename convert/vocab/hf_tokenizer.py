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

from edgeft.errors import EdgeftError

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


def chat_ids(tokenizer, text: str) -> list[int]:
    """The ids training feeds for rendered chat `text`, which are those llama.cpp feeds: the special tokens the
    template wrote, parsed, and the BOS the GGUF adds in front (`convert.vocab.special.bos_first`)."""
    from convert.vocab.special import bos_first

    ids = [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    return bos_first(ids, llama_cpp_bos_id(tokenizer))


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


__all__ = ["TOKENIZER_FILES", "chat_ids", "llama_cpp_bos_id", "load_hf_tokenizer", "match_llama_cpp"]
