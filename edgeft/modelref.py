"""What a model argument means: a local Hugging Face folder, or a hub id fetched once with huggingface_hub.

Every command that takes a model (`--base`, MODEL_DIR, `BASE=`) goes through `resolve_model`, so the rule is the
same everywhere: an existing folder wins; otherwise an `owner/name` id is downloaded (only the files a conversion
or fine-tune reads); offline, that fails with one line instead of a traceback or a hang.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from convert.common.errors import EdgeftError

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Weights as safetensors only: pickle checkpoints are refused by the converter anyway, and skipping them halves
# the download for repos that ship both.
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt", "README.md", "LICENSE*"]


def is_hub_id(ref: str | os.PathLike) -> bool:
    """True for `owner/name` that is not an existing local path."""
    return not Path(str(ref)).expanduser().exists() and bool(HUB_ID.match(str(ref)))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model(ref: str | os.PathLike, *, what: str = "model") -> Path:
    """Return a local folder for `ref` (a folder path or a hub id)."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise EdgeftError(f"{text}: the {what} must be a Hugging Face model folder, not a file")
    if not HUB_ID.match(text):
        raise EdgeftError(f"{text}: no such {what} folder; pass a local Hugging Face folder or a hub id (owner/name)")
    if _offline():
        raise EdgeftError(f"{text}: no such local folder, and hub downloads are off (HF_HUB_OFFLINE is set); "
                          f"download the model folder and pass its path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise EdgeftError(f"{text}: fetching a hub id needs huggingface_hub (pip install 'edgeft[train]'); "
                          f"or pass a local folder") from exc
    try:
        return Path(snapshot_download(repo_id=text, allow_patterns=HUB_FILES))
    except Exception as exc:  # network down, repo missing, gated: all the same to the user
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise EdgeftError(f"{text}: not a local folder, and fetching it from the hub failed ({reason}); "
                          f"check the id and the network, or pass a local folder") from None
