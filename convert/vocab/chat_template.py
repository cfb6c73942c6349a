"""Which chat template a model folder holds: the one rule every stage uses (data check, masking, training, merge,
convert, convert-lora, release).

The rule is transformers 5's (`PreTrainedTokenizerBase._from_pretrained`), because the training side renders through
transformers and the GGUF must carry what training rendered:

1. `chat_template.jinja` in the folder;
2. otherwise tokenizer_config.json's `chat_template`: a string as it is; a list of `{"name", "template"}` (the
   multi-template form) means its entry named "default" (transformers refuses to guess when there is none);
3. template files under `additional_chat_templates/` take part as transformers merges them: a `default.jinja`
   there is the default, and when the folder has any of them but no `chat_template.jinja`, transformers no longer
   looks at tokenizer_config.json at all.

llama.cpp's own converter (gguf-py) reads tokenizer_config.json first; a fine-tune that saved its template next to
the base's config then ships the base's template in its GGUF. That is the bug this module exists to prevent.
"""

from __future__ import annotations

import json
from pathlib import Path

from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

TEMPLATE_FILE = "chat_template.jinja"
EXTRA_TEMPLATE_DIR = "additional_chat_templates"
CONFIG_FILE = "tokenizer_config.json"


def default_template(named: dict, where: str) -> str:
    """The "default" entry of named templates ({name: template}), as transformers picks it without tools."""
    if "default" not in named:
        raise EdgeftError(f"{where}: {len(named)} named chat templates ({', '.join(sorted(map(str, named)))}) and "
                          "none named 'default', so transformers cannot pick one either; write the one to train "
                          f"with into {TEMPLATE_FILE}")
    return named["default"]


def _config_template(model_dir: Path):
    path = model_dir / CONFIG_FILE
    if not path.exists():
        return None
    check_input_file(path, "fix or re-download the file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeftError(f"{path}: unreadable tokenizer config ({exc}); fix or re-download the file") from exc
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
        template = default_template(named, f"{path}: chat_template")
    if template is not None and not isinstance(template, str):
        raise EdgeftError(f"{path}: chat_template is a {type(template).__name__}, not a template string or a "
                          "list of named templates; fix the file")
    return template


def chat_template_of(model_dir: str | Path) -> str | None:
    """The chat template transformers would use for the folder, or None when it has none (blank counts as none)."""
    model_dir = Path(model_dir)
    templates: dict[str, str] = {}
    if (model_dir / TEMPLATE_FILE).is_file():
        templates["default"] = (model_dir / TEMPLATE_FILE).read_text(encoding="utf-8")
    extra_dir = model_dir / EXTRA_TEMPLATE_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:
        template = default_template(templates, str(model_dir))
    else:
        template = _config_template(model_dir)
    return template if template and template.strip() else None


__all__ = ["chat_template_of", "default_template", "TEMPLATE_FILE", "CONFIG_FILE"]
