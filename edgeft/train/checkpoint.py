"""Resumable checkpoints: trainable weights, optimizer, scheduler, every process's RNG state, and the step.

Layout (each folder is written under a temporary name and renamed when complete, so a SIGKILL mid-write leaves
the previous checkpoint as the latest):

    OUT_DIR/checkpoints/step-000050/  trainable.safetensors  optimizer.pt  rng.pt  state.json
    OUT_DIR/checkpoints/best/         trainable.safetensors  state.json     (lowest held-out loss so far)

The data position is the global step: the batch plan is a pure function of (seed, epoch), see edgeft/train/batches.py.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

from edgeft.errors import EdgeftError
from edgeft.fsutil import atomic_dir

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(out_dir: Path) -> Path:
    return Path(out_dir) / CHECKPOINTS


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def capture_rng() -> dict:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def trainable_state(model) -> dict:
    return {name: p.detach().to("cpu").clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def _write_weights_and_state(folder: Path, model, state: dict) -> None:
    """What every checkpoint folder holds: the trainable weights and state.json."""
    from safetensors.torch import save_file

    save_file(trainable_state(model), str(folder / "trainable.safetensors"))
    (folder / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def load_trainable_state(model, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(path))
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in saved]
    if missing:
        raise EdgeftError(f"{path}: checkpoint lacks {missing[0]} (recipe changed since it was written?); "
                          "resume with the same recipe or start again with --overwrite")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor.to(params[name].device))


def save_checkpoint(out_dir: Path, step: int, *, model, optimizer, scheduler, rng_states: list[dict], state: dict,
                    keep: int) -> Path:
    import torch

    path = checkpoint_root(out_dir) / f"step-{step:06d}"
    with atomic_dir(path, overwrite=True) as tmp:
        _write_weights_and_state(tmp, model, {**state, "step": step})
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        torch.save(rng_states, tmp / "rng.pt")
    for _, old in list_checkpoints(out_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: Path, *, model, optimizer, scheduler) -> tuple[dict, list[dict]]:
    """Restore weights, optimizer and scheduler in place; return (state, per-rank RNG states)."""
    import torch

    load_trainable_state(model, path / "trainable.safetensors")
    # weights_only: a checkpoint folder is data, never code (the same rule as --allow-pickle for models).
    saved = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_states = torch.load(path / "rng.pt", weights_only=True)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return state, rng_states


def save_best(out_dir: Path, *, model, state: dict) -> Path:
    path = checkpoint_root(out_dir) / "best"
    with atomic_dir(path, overwrite=True) as tmp:
        _write_weights_and_state(tmp, model, state)
    return path


def best_checkpoint(out_dir: Path) -> Path | None:
    path = checkpoint_root(out_dir) / "best"
    return path if (path / "trainable.safetensors").is_file() else None
