"""`general.*` metadata: name, architecture, file type, quantization version, base model and license.

The model card (README.md front matter) is where Hugging Face keeps license and base_model; config.json rarely has
them. We parse only the simple `key: value` / `- item` YAML subset model cards use, to stay free of heavy deps.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import gguf

# GGUF has no per-token lstrip/rstrip flags. llama.cpp sets them itself from general.name (llama-vocab.cpp, "Handle
# per token attributes"): when the lower-cased name contains one of these, every control / user-defined / unknown
# token and </s> swallow the whitespace after them (rstrip), except the three below. That is exactly what Phi-3's
# tokenizer files say (chat tokens and </s> rstrip=true; <unk>, <s>, <|endoftext|> rstrip=false): llama.cpp's
# converter used to name such models "Phi3". A Phi-3 fine-tune merged into a folder called e.g. "merged" must
# therefore still carry the marker, or llama.cpp keeps the "\n" after <|user|> that transformers drops.
PHI3_NAME_MARKERS = ("phi-3", "phi3")
PHI3_NOT_RSTRIPPED = frozenset({"<unk>", "<s>", "<|endoftext|>"})


def read_model_card(model_dir: Path) -> dict[str, Any]:
    """Front matter of README.md as a dict (empty when absent or unparsable)."""
    path = model_dir / "README.md"
    if not path.exists():
        return {}
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    end = text.find("\n---", 3)
    if end < 0:
        return {}
    from convert.common.jsonl import parse_yaml
    from convert.common.errors import EdgeftError

    try:
        card = parse_yaml(text[3:end], path, "model card front matter")
    except EdgeftError:  # a malformed card must not stop a conversion; we only lose optional metadata
        return {}
    return card if isinstance(card, dict) else {}


def model_name(model_dir: Path, config: dict[str, Any]) -> str:
    name = config.get("_name_or_path") or ""
    name = Path(name).name if name and not Path(name).is_absolute() else ""
    return name or model_dir.resolve().name


def _added_token_rstrip(model_dir: Path) -> dict[str, bool]:
    """content -> rstrip for every added token the tokenizer files list (tokenizer_config.json wins, as in HF)."""
    flags: dict[str, bool] = {}
    for path, key in ((model_dir / "tokenizer.json", "added_tokens"),
                      (model_dir / "tokenizer_config.json", "added_tokens_decoder")):
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text(encoding="utf-8")).get(key) or []
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            continue  # the vocabulary reader reports broken tokenizer files; the name must not fail first
        for entry in entries.values() if isinstance(entries, dict) else entries:
            if isinstance(entry, dict) and isinstance(entry.get("content"), str):
                flags[entry["content"]] = bool(entry.get("rstrip"))
    return flags


def name_for_llama_cpp(name: str, model_dir: Path) -> str:
    """general.name, with the Phi-3 marker added when llama.cpp's Phi-3 rule matches the tokenizer better than no
    rule does (see PHI3_NAME_MARKERS); a warning names the tokens whose whitespace will still differ from HF."""
    flags = _added_token_rstrip(model_dir)
    wrong_without = {text for text, rstrip in flags.items() if rstrip}
    wrong_with = {text for text, rstrip in flags.items() if rstrip != (text not in PHI3_NOT_RSTRIPPED)}
    marked = any(marker in name.lower() for marker in PHI3_NAME_MARKERS)
    if not marked and len(wrong_with) < len(wrong_without):
        name, marked = f"{name}-phi3", True
    wrong = wrong_with if marked else wrong_without
    if wrong:
        rule = "its Phi-3 rule (the model name contains phi3)" if marked else "no per-token strip flags"
        warnings.warn(f"{model_dir}: llama.cpp applies {rule}, so whitespace after {sorted(wrong)[:5]} will tokenize "
                      "differently than in transformers", stacklevel=2)
    return name


def write_general(writer, *, model_dir: Path, config: dict[str, Any], file_type) -> None:
    writer.add_name(name_for_llama_cpp(model_name(model_dir, config), model_dir))
    writer.add_type("model")
    writer.add_file_type(int(file_type.gguf_file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    card = read_model_card(model_dir)
    license_ = card.get("license") or config.get("license")
    if isinstance(license_, str):
        writer.add_license(license_)
    base_models = card.get("base_model") or []
    if isinstance(base_models, str):
        base_models = [base_models]
    base_models = [b for b in base_models if isinstance(b, str)]
    if base_models:
        writer.add_base_model_count(len(base_models))
        for i, base in enumerate(base_models):
            writer.add_base_model_name(i, base.split("/")[-1])
            if "/" in base:
                writer.add_base_model_organization(i, base.split("/")[0])
                writer.add_base_model_repo_url(i, f"https://huggingface.co/{base}")
    if isinstance(card.get("language"), list):
        writer.add_languages([str(x) for x in card["language"]])

