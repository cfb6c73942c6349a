"""Same data? What a training run reads, recorded when it starts (OUT/inputs.json, beside the adapter) and compared by
`train --resume`, so a resumed run never continues on other data or another base without a word. The model
fingerprint, the file name and the adapter/base check live in `convert.fingerprint` (convert-lora needs them too).
Data files are small next to models and are hashed whole.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from convert.fingerprint import model_fingerprint, read_inputs
from convert.common.errors import EdgeftError


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def training_inputs(base, data, eval_path=None) -> dict:
    """What a training run reads, as recorded in OUT/inputs.json."""
    record = {"base": {"path": str(base), "fingerprint": model_fingerprint(base)},
              "data": {"path": str(data), "sha256": file_sha256(data)}}
    record["eval"] = {"path": str(eval_path), "sha256": file_sha256(eval_path)} if eval_path else None
    return record


def check_resume_inputs(out_dir: Path, base, data, eval_path) -> None:
    """A resumed run must read what the run it continues read; refuse naming the first input that changed."""
    recorded = read_inputs(out_dir)
    if recorded is None:
        return  # a run from before inputs.json: nothing to compare
    now = training_inputs(base, data, eval_path)
    if recorded["base"]["fingerprint"] != now["base"]["fingerprint"]:
        raise EdgeftError(f"--resume {out_dir}: the run was started on base {recorded['base']['path']}, and --base "
                          f"{base} is another model; resume with that base, or start again with --overwrite")
    for role, option in (("data", "--data"), ("eval", "--eval")):
        before, after = recorded.get(role), now[role]
        if (before or {}).get("sha256") != (after or {}).get("sha256"):
            was = f"{option} {before['path']} (sha256 {before['sha256'][:12]})" if before else f"no {option}"
            now_text = f"{option} {after['path']} differs" if after else f"no {option} is given now"
            raise EdgeftError(f"--resume {out_dir}: the run was started with {was}, and {now_text}; resume with "
                              "the same file, or start again with --overwrite")

