"""Publish a release: `release/NAME/` with the GGUF, manifest.json, a model card and an Ollama Modelfile.

Publishing is all-or-nothing: the folder is assembled under a temporary name and renamed into place only when every
gate passed; a failed gate raises EdgeftError naming it and leaves any earlier release untouched. The manifest
records the sha256 and size of every file but the card; the card (README.md) records the manifest's own sha256 and
is rendered from it, and a copy of that digest is written beside the folder (NAME.sha256, `sha256sum -c` form), so
`edgeft.release.verify` can prove the files, the figures and the verdict are what was evaluated.

Example:
    publish_release("edgeft-demo", Path("release"), gguf=Path("out/model-Q4_K_M.gguf"), base_dir=Path("base"),
                    quant="Q4_K_M", recipe=recipe, data_files={"train": Path("train.jsonl")}, metrics=metrics,
                    gates=gates)
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata
from pathlib import Path

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_dir, atomic_file
from edgeft.identity import file_sha256

VERSIONED_PACKAGES = ["edgeft", "torch", "transformers", "peft", "gguf", "llama-cpp-python"]
LICENSE_FILES = ["LICENSE", "LICENSE.txt", "LICENSE.md", "license.txt", "COPYING"]
# 2: the card is not in the file list; it records the manifest's sha256 instead (1 could be edited unnoticed).
MANIFEST_VERSION = 2
CARD = "README.md"
# The peft adapter folder inside the release (vLLM's --lora-modules NAME=PATH serves it over the upstream base).
PEFT_DIR = "peft-adapter"
PEFT_WEIGHTS = ("adapter_config.json", "adapter_model.safetensors")


def file_entry(path: Path, root: Path | None = None) -> dict:
    path = Path(path)
    return {"path": str(path.relative_to(root)) if root else str(path), "size": path.stat().st_size,
            "sha256": file_sha256(path)}


def adapter_rank(config: dict, where: Path) -> int:
    """The largest LoRA rank in a peft adapter_config.json: r, or a larger one rank_pattern gives some modules (what
    vLLM's --max-lora-rank must hold)."""
    ranks = [config.get("r"), *(config.get("rank_pattern") or {}).values()]
    ranks = [rank for rank in ranks if rank is not None]
    if not ranks:
        raise EdgeftError(f"{where / 'adapter_config.json'}: no rank (r); re-save the adapter with peft")
    return max(ranks)


def ship_peft_adapter(adapter_dir: Path, folder: Path) -> dict:
    """Copy the peft adapter as peft loads it (config, weights, and the tokenizer and chat template training saved
    beside them, which a grown vocabulary needs) into `folder`; returns the manifest's {"path", "rank"}."""
    from convert.adapter_file import read_adapter_config
    from edgeft.merge import TEMPLATE_FILES, TOKENIZER_FILES

    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)  # one clear line for a folder that is not a LoRA adapter
    for name in PEFT_WEIGHTS:
        if not (adapter_dir / name).is_file():
            raise EdgeftError(f"{adapter_dir / name}: missing; run the train stage again (make release reruns it)")
    folder.mkdir()
    for name in (*PEFT_WEIGHTS, *TOKENIZER_FILES, *TEMPLATE_FILES):
        if (adapter_dir / name).is_file():
            _link_or_copy(adapter_dir / name, folder / name)
    return {"path": folder.name, "rank": adapter_rank(config, adapter_dir)}


def package_versions() -> dict[str, str | None]:
    """Installed versions from package metadata (nothing is imported, so torch is not loaded for this)."""
    versions = {}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    if versions["edgeft"] is None:  # running from a checkout that is not pip-installed
        from edgeft import __version__
        versions["edgeft"] = __version__
    return versions


def _front_matter_license(readme: Path) -> str | None:
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"---\s*\n(.*?)\n---", text, re.S)
    if not match:
        return None
    found = re.search(r"^license:\s*['\"]?([^'\"\n]+?)['\"]?\s*$", match.group(1), re.M)
    return found.group(1).strip() if found else None


def base_license(base_dir: Path) -> dict:
    """The base model's license as its own files declare it: model-card front matter, config, or a LICENSE file.

    Returns {"license": id or None, "source": where it was found, "flag": None or why a user must look}."""
    base_dir = Path(base_dir)
    readme = base_dir / "README.md"
    if readme.is_file() and (found := _front_matter_license(readme)):
        return {"license": found, "source": "README.md front matter", "flag": None}
    config = base_dir / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("license")
        if value:
            return {"license": str(value), "source": "config.json", "flag": None}
    for name in LICENSE_FILES:
        if (base_dir / name).is_file():
            first = (base_dir / name).read_text(errors="replace").strip().splitlines()[:1]
            return {"license": (first[0].strip() if first else "see LICENSE"), "source": name, "flag": None}
    return {"license": None, "source": None,
            "flag": f"no license found in {base_dir} (README.md front matter, config.json, LICENSE): "
                    "check the base model's terms before distributing this release"}


def base_provenance(base_dir: Path) -> dict | None:
    """Where the base's weights came from, when the folder records it in `source.json` (the demo's imported
    SmolLM2 does: package, version, file, sha256, license); None for a folder that does not."""
    stamp = Path(base_dir) / "source.json"
    if not stamp.is_file():
        return None
    try:
        record = json.loads(stamp.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EdgeftError(f"{stamp}: not valid JSON; fix or delete it (the demo rewrites it with "
                          "`edgeft demo base --force`)") from None
    if not isinstance(record, dict):
        raise EdgeftError(f"{stamp}: expected a JSON object with the base's source, license and sha256")
    return record


def license_text(base_dir: Path) -> str | None:
    for name in LICENSE_FILES:
        if (Path(base_dir) / name).is_file():
            return (Path(base_dir) / name).read_text(errors="replace")
    return None


def failed_gates(gates: list[dict]) -> list[dict]:
    """Gate rows as runtime.gates.check_gates writes them: {"gate", "threshold", "value", "passed", "text"}."""
    return [g for g in gates if not g.get("passed")]


def base_entry(base_dir: Path, base_info: dict) -> dict:
    provenance = base_provenance(base_dir)
    entry = {"path": str(base_dir), "name": (provenance or {}).get("name") or Path(base_dir).name, **base_info}
    if provenance:
        entry["provenance"] = provenance
        if not entry.get("license") and provenance.get("license"):
            entry.update(license=provenance["license"], source="source.json", flag=None)
    return entry


def gguf_file_name(name: str, quant: str) -> str:
    return f"{name}-{quant}.gguf"


def digest_sidecar(folder: Path) -> Path:
    """Where publishing records the manifest's sha256 beside the release folder, as `sha256sum -c` reads it. It does
    not travel with the folder: whoever edits an uploaded copy of the folder cannot edit it too."""
    folder = Path(folder)
    return folder.parent / f"{folder.name}.sha256"


def published_digest(folder: Path) -> str:
    """The line that tells a publisher what to announce with the release."""
    digest = file_sha256(Path(folder) / "manifest.json")
    return (f"manifest.json sha256 {digest} (also in {digest_sidecar(folder)}): announce it with the release; "
            f"`edgeft release verify FOLDER --digest {digest}` checks a copy against it")


def build_manifest(*, name: str, quant: str, files: list[dict], base_dir: Path, base_info: dict, recipe: dict,
                   data_files: dict[str, Path], metrics: dict, gates: list[dict],
                   system_prompt: str | None = None, adapter: dict | None = None) -> dict:
    """Everything a reader needs to trust and reproduce the release (and to render its card), as one JSON-able
    dict."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": name,
        "quant": quant,
        "system_prompt": system_prompt,
        "files": files,
        "adapter": adapter,  # the peft adapter folder: {"path", "rank"} (the card's vLLM line), or None
        "base_model": base_entry(base_dir, base_info),
        "recipe": recipe,
        "data": {role: file_entry(path) for role, path in data_files.items()},
        "metrics": metrics,
        "gates": gates,
        "verdict": "pass" if not failed_gates(gates) else "fail",
        "versions": package_versions(),
    }


def refuse_failed_gates(gates: list[dict], target: Path, *, report_dir: Path | None = None) -> None:
    """EdgeftError naming every failed gate. An earlier release in `target` stays (it passed its own gates), and
    the line says so: "nothing was published" must not read as "what is there is this model"."""
    bad = failed_gates(gates)
    if not bad:
        return
    where = f" (report kept in {report_dir})" if report_dir else ""
    earlier = Path(target) / "manifest.json"
    still = ""
    if earlier.is_file():
        import datetime

        when = datetime.datetime.fromtimestamp(earlier.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
        still = f"; {target} still holds an earlier release, published {when}, which is NOT this model"
    raise EdgeftError("gate failed: " + "; ".join(g.get("text") or g["gate"] for g in bad) +
                      f"{where}; nothing was published to {target}{still}")


def check_release_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise EdgeftError(f"release name {name!r} is not a plain file name; use letters, digits, '.', '_' or '-'")


def _link_or_copy(src: Path, dst: Path) -> None:
    # A hard link costs no disk for a multi-GB GGUF; across file systems fall back to a copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def publish_release(name: str, release_root: Path, *, gguf: Path, base_dir: Path, quant: str, recipe: dict,
                    data_files: dict[str, Path], metrics: dict, gates: list[dict], adapter: Path | None = None,
                    peft_adapter: Path | None = None, system_prompt: str | None = None,
                    chat_template: str | None = None, stop_tokens: list[str] | None = None, report_dir: Path | None = None) -> Path:
    """Assemble release_root/NAME atomically; refuse (EdgeftError naming the gates) when any gate failed.

    `adapter`: the LoRA as a GGUF; `peft_adapter`: the training output folder, shipped as peft saves it (PEFT_DIR)."""
    from edgeft.release.card import render_model_card, render_modelfile

    check_release_name(name)
    refuse_failed_gates(gates, Path(release_root) / name, report_dir=report_dir)
    for path in [gguf, adapter, *data_files.values()]:
        if path is not None and not Path(path).is_file():
            raise EdgeftError(f"{path}: missing; run the stage that makes it (make release reruns it)")
    base_info = base_license(base_dir)
    gguf_name = gguf_file_name(name, quant)
    target = Path(release_root) / name
    with atomic_dir(target, overwrite=True) as tmp:
        _link_or_copy(Path(gguf), tmp / gguf_name)
        if adapter is not None:
            _link_or_copy(Path(adapter), tmp / f"{name}-adapter.gguf")
        peft = ship_peft_adapter(peft_adapter, tmp / PEFT_DIR) if peft_adapter is not None else None
        license_body = license_text(base_dir)
        if license_body:
            (tmp / "LICENSE").write_text(license_body)
        (tmp / "Modelfile").write_text(render_modelfile(
            gguf_name, chat_template=chat_template, system_prompt=system_prompt, stop_tokens=stop_tokens,
            license_id=base_info["license"]))
        manifest = build_manifest(name=name, quant=quant, base_dir=base_dir, base_info=base_info, recipe=recipe,
                                  files=[file_entry(p, tmp) for p in sorted(tmp.rglob("*")) if p.is_file()],
                                  data_files=data_files, metrics=metrics, gates=gates, system_prompt=system_prompt,
                                  adapter=peft)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        digest = file_sha256(tmp / "manifest.json")
        (tmp / CARD).write_text(render_model_card(manifest, gguf_name=gguf_name, system_prompt=system_prompt,
                                                  digest=digest))
        # An earlier release's digest must not outlive its folder: killed between the rename and the write below,
        # the new folder has no sidecar (verify says so) rather than one that calls it forged.
        digest_sidecar(target).unlink(missing_ok=True)
    with atomic_file(digest_sidecar(target)) as tmp:
        tmp.write_text(f"{digest}  {name}/manifest.json\n")
    return target
