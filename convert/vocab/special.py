"""Special tokens, add_bos/add_eos and the chat template, from tokenizer_config.json (and friends; the template
from `convert.vocab.chat_template`, the one rule for it).

EOS decides when generation stops, so we take it from where transformers takes it, and also mark the chat
template's end-of-turn token (EOT) so llama.cpp stops at the end of an assistant turn even when EOS is another token.
"""

from __future__ import annotations

from pathlib import Path

from convert.vocab import Vocab, read_json
from convert.vocab.chat_template import chat_template_of
from edgeft.errors import EdgeftError

ROLES = ("bos", "eos", "unk", "pad")
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
        # SentencePiece models name their specials in the proto; fall back to its conventional ids.
        for role, piece in (("unk", "<unk>"), ("bos", "<s>"), ("eos", "</s>")):
            if role not in vocab.special_ids and piece in index:
                vocab.special_ids[role] = index[piece]
    for text in END_OF_TURN_TOKENS:
        if text in index:
            vocab.special_ids["eot"] = index[text]
            break

    tokenizer_json = read_json(model_dir / "tokenizer.json") if (model_dir / "tokenizer.json").exists() else {}
    bos_text = _token_text(config.get("bos_token"))
    eos_text = _token_text(config.get("eos_token"))
    if "add_bos_token" in config:
        vocab.add_bos = bool(config["add_bos_token"])
    else:
        vocab.add_bos = _post_processor_adds(tokenizer_json, bos_text) or vocab.model == "llama"
    if "add_eos_token" in config:
        vocab.add_eos = bool(config["add_eos_token"])
    else:
        vocab.add_eos = False
    # The template transformers (and so training) uses: chat_template.jinja before tokenizer_config.json's.
    vocab.chat_template = chat_template_of(model_dir)
