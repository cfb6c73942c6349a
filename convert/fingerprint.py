"""Same model? A model folder's fingerprint, the record of what a training run read (OUT/inputs.json, beside the
adapter), and the check that an adapter meets the base it was trained on: `merge` and `convert-lora` refuse another
base of the same shape here, `train --resume` compares its inputs with the same fingerprint (`edgeft.identity`).

A model's fingerprint hashes its config and, for every weight file, its size and 32 evenly spaced 4 KiB samples:
two checkpoints of one architecture differ in nearly every sample, and it costs milliseconds on a multi-GB model.
No torch here: convert-lora uses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from convert.common.errors import EdgeftError

INPUTS_FILE = "inputs.json"
SAMPLES, SAMPLE_BYTES = 32, 4096
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Rewritten by every save_pretrained without changing the model.
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    model_dir = Path(model_dir)
    digest = hashlib.sha256()
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        for key in VOLATILE_CONFIG_KEYS:
            config.pop(key, None)
        digest.update(json.dumps(config, sort_keys=True).encode())
    for path in sorted(p for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file()):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as handle:
            for index in range(SAMPLES):
                handle.seek(max(0, size - SAMPLE_BYTES) * index // (SAMPLES - 1))
                digest.update(handle.read(SAMPLE_BYTES))
    return digest.hexdigest()


def read_inputs(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / INPUTS_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise EdgeftError(f"{path}: damaged (not JSON); delete it to skip the check or train again") from None


def check_adapter_base(adapter_dir: Path, named_base: str | None, base_dir: Path) -> None:
    """Refuse a base that is not the one the adapter was trained on, when that can be known: from the fingerprint
    `edgeft train` recorded, else from adapter_config.json's base_model_name_or_path when it is a local folder."""
    recorded = (read_inputs(adapter_dir) or {}).get("base")
    if recorded is None and named_base and (Path(named_base) / "config.json").is_file():
        if Path(named_base).resolve() == Path(base_dir).resolve():
            return
        recorded = {"path": named_base, "fingerprint": model_fingerprint(named_base)}
    if recorded is None or recorded["fingerprint"] == model_fingerprint(base_dir):
        return
    raise EdgeftError(f"{adapter_dir}: trained on base {recorded['path']}, but --base {base_dir} is another model "
                      "(its config or weights differ, although the shapes fit); pass the base it was trained on")
