"""Special tokens, add_bos/add_eos and the chat template, from tokenizer_config.json (and friends; the template
from `convert.vocab.chat_template`, the one rule for it).

EOS decides when generation stops, so we take it from where transformers takes it, and also mark the chat
template's end-of-turn token (EOT) so llama.cpp stops at the end of an assistant turn even when EOS is another token.
"""

from __future__ import annotations

import json
from pathlib import Path

from convert.vocab import Vocab, read_json
from convert.vocab.chat_template import chat_template_of
from convert.common.errors import EdgeftError

ROLES = ("bos", "eos", "unk", "pad")
# SentencePiece models name their specials in the proto; these are its conventional pieces when the config names none.
SPM_DEFAULT_SPECIALS = (("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>"))
# End-of-turn markers of the chat formats we know; whichever the vocabulary has becomes tokenizer.ggml.eot_token_id.
END_OF_TURN_TOKENS = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>", "<|eot|>")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value


def _post_processor_adds(tokenizer_json: dict, token: str | None) -> bool:
    """Whether tokenizer.json's post-processor puts `token` around a single sequence (how Llama 3 adds BOS)."""
    if token is None:
        return False
    processor = tokenizer_json.get("post_processor") or {}
    steps = processor.get("processors", [processor]) if processor.get("type") == "Sequence" else [processor]
    for step in steps:
        if step.get("type") == "TemplateProcessing":
            for piece in step.get("single", []):
                if piece.get("SpecialToken", {}).get("id") == token:
                    return True
    return False


def apply_special_tokens(vocab: Vocab, model_dir: Path) -> None:
    config_path = model_dir / "tokenizer_config.json"
    config = read_json(config_path) if config_path.exists() else {}
    index = {text: i for i, text in enumerate(vocab.tokens)}
    for role in ROLES:
        text = _token_text(config.get(f"{role}_token"))
        if text is None:
            continue
        if text not in index:
            raise EdgeftError(f"{config_path}: {role}_token {text!r} is not in the vocabulary; the tokenizer files disagree")
        vocab.special_ids[role] = index[text]
    if vocab.model == "llama":
        for role, piece in SPM_DEFAULT_SPECIALS:
            if role not in vocab.special_ids and piece in index:
                vocab.special_ids[role] = index[piece]
    for text in END_OF_TURN_TOKENS:
        if text in index:
            vocab.special_ids["eot"] = index[text]
            break

    vocab.add_bos = _adds_bos(config, model_dir, sentencepiece=vocab.model == "llama")
    if "add_eos_token" in config:
        vocab.add_eos = bool(config["add_eos_token"])
    else:
        vocab.add_eos = False
    # The template transformers (and so training) uses: chat_template.jinja before tokenizer_config.json's.
    vocab.chat_template = chat_template_of(model_dir)


def _adds_bos(config: dict, model_dir: Path, *, sentencepiece: bool) -> bool:
    """tokenizer.ggml.add_bos_token: the config's add_bos_token, else whether tokenizer.json's post-processor adds
    BOS (Llama 3), else SentencePiece's habit (always)."""
    if "add_bos_token" in config:
        return bool(config["add_bos_token"])
    tokenizer_json = read_json(model_dir / "tokenizer.json") if (model_dir / "tokenizer.json").exists() else {}
    return _post_processor_adds(tokenizer_json, _token_text(config.get("bos_token"))) or sentencepiece


def bos_llama_cpp_adds(model_dir: str | Path) -> str | None:
    """The text of the BOS token llama.cpp puts before a prompt (add_bos_token) with the GGUF `edgeft convert` makes
    of `model_dir`, decided as `apply_special_tokens` decides it; None when it puts none. The training side reads
    it here so that it feeds the BOS the GGUF will (`edgeft.data.masking`), through `bos_first`."""
    model_dir = Path(model_dir)
    config_path = model_dir / "tokenizer_config.json"
    config = read_json(config_path) if config_path.exists() else {}
    sentencepiece = (model_dir / "tokenizer.model").exists()  # what load_vocab reads first
    if not _adds_bos(config, model_dir, sentencepiece=sentencepiece):
        return None
    bos_text = _token_text(config.get("bos_token"))
    if bos_text is None and sentencepiece:
        bos_text = dict(SPM_DEFAULT_SPECIALS)["bos"]
    return bos_text


def state_add_bos(tokenizer_dir: str | Path, bos_text: str | None) -> None:
    """Write the BOS decision `bos_text` (what `bos_llama_cpp_adds` said for the folder training read) into
    `tokenizer_dir`'s tokenizer_config.json as add_bos_token (and bos_token), the first thing `_adds_bos` reads.

    A tokenizer saved by transformers 5 has no add_bos_token, so without this the saved folder falls back on
    tokenizer.json's post-processor, which may say the opposite of the base: add_bos_token false with a
    post-processor that adds BOS, or true with one that adds none. Merge copies that folder, so its GGUF would feed
    another BOS than the one training fed."""
    path = Path(tokenizer_dir) / "tokenizer_config.json"
    config = read_json(path) if path.exists() else {}
    config["add_bos_token"] = bos_text is not None
    if bos_text is not None and _token_text(config.get("bos_token")) != bos_text:
        config["bos_token"] = bos_text
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def bos_first(ids: list[int], bos_id: int | None) -> list[int]:
    """The ids llama.cpp feeds for rendered chat text tokenized without added specials (`ids`): `bos_id`, the BOS
    it adds (None when the vocabulary adds none), first, unless the text already begins with it.

    This is llama-server's chat path (common/chat.cpp strips a leading BOS text when add_bos_token is set, then the
    text is tokenized with add_special): a template's own leading {{ bos_token }} is fed once, a template without
    one gets one, and one written after anything else (a newline) ends up second: two BOS. The runtime
    (`runtime.generate.prompt_tokens`) and training (`edgeft.data.masking`) both feed what this returns."""
    if bos_id is None or (ids and ids[0] == bos_id):
        return list(ids)
    return [bos_id, *ids]
