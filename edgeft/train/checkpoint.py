"""Resumable checkpoints: trainable weights, optimizer, scheduler, every process's RNG state, and the step.

Layout (each folder is written under a temporary name and renamed when complete, so a SIGKILL mid-write leaves
the previous checkpoint as the latest):

    OUT_DIR/checkpoints/step-000050/  trainable.safetensors  optimizer.pt  rng.pt  state.json
    OUT_DIR/checkpoints/best/         trainable.safetensors  state.json     (lowest held-out loss so far)
    OUT_DIR/run.json                  the run marker, the first file a run writes into its folder

The marker is what makes a folder a training run's: a run killed before its first checkpoint leaves recipe.yaml,
inputs.json and metrics.jsonl (and maybe checkpoints/best/) with nothing to resume from, and the next `edgeft train`
must say what that folder is instead of training into it; --overwrite replaces only a folder that is a run's. Which
folders train may write into or replace is decided by the rule every command shares (`refuse_foreign_run_folder`,
convert.common.fsutil.refuse_foreign_folder); what it then tells the user about a run's folder is `run_folder_state`.

The data position is the global step: the batch plan is a pure function of (seed, epoch), see edgeft/train/batches.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Callable

from convert.fingerprint import INPUTS_FILE
from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_dir, atomic_file, is_marked, refuse_foreign_folder

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d+)$")
RUN_MARKER = "run.json"
RUN_TOOL = "edgeft train"
# Folders from before the marker: recipe.yaml and the training inputs are the first two files a run writes.
LEGACY_RUN_FILES = ("recipe.yaml", INPUTS_FILE)


def mark_run_folder(out_dir: Path) -> None:
    """Claim `out_dir` (just created, or being resumed) for a training run, before anything else is written there.
    The pid and start time are for a person looking at a folder a kill left; the tool only needs `tool`."""
    with atomic_file(Path(out_dir) / RUN_MARKER) as tmp:
        tmp.write_text(json.dumps({"tool": RUN_TOOL, "pid": os.getpid(),
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=1),
                       encoding="utf-8")


def _not_our_marker(path: Path) -> str | None:
    """Why a run.json present is not this command's (another tool's file of that name), or None."""
    if path.name != RUN_MARKER:
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        marker = None
    if isinstance(marker, dict) and marker.get("tool") == RUN_TOOL:
        return None
    return f"is not the marker {RUN_TOOL} writes (no \"tool\": \"{RUN_TOOL}\" in it)"


# A run's folder: its marker, or an older run's first two files together.
RUN_MARKERS = (RUN_MARKER, LEGACY_RUN_FILES)


def refuse_foreign_run_folder(out_dir: Path) -> None:
    """Train into (or replace) only a missing or empty folder or a run's own, by the rule every command shares.
    By the marker alone, not by output names: an adapter folder from elsewhere holds only names a run writes too
    (adapter_config.json, README.md...), and it is someone's. The line reads "exists and is not empty and is not an
    edgeft training run": an empty folder is train's too."""
    refuse_foreign_folder(out_dir, what="empty and is not an edgeft training run", markers=RUN_MARKERS,
                          vouch_marker=_not_our_marker)


def is_run_folder(out_dir: Path) -> bool:
    """True for a folder `edgeft train` wrote (its marker, or an older run's first two files): the only kind
    --overwrite may replace."""
    return is_marked(out_dir, RUN_MARKERS, _not_our_marker)


def run_folder_state(out_dir: Path) -> str:
    """What a run folder holds, as the next run must be told: finished, resumable (a step checkpoint) or partial
    (killed before its first checkpoint, or between writing the adapter and the summary: nothing to resume)."""
    if (Path(out_dir) / "summary.json").is_file():
        return "finished"
    return "resumable" if latest_checkpoint(out_dir) is not None else "partial"


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


class DamagedCheckpoint(EdgeftError):
    """A checkpoint file that cannot be read back (not a refusal: `restore_latest` goes on to the one before)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: cannot be read ({reason}); the checkpoint is damaged (a full disk or a copy cut "
                         "short?): remove its folder to go on without it")
        self.reason = reason


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:120] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def restore_latest(out_dir: Path, restore: Callable[[Path], None]) -> Path:
    """`restore(path)` from the newest checkpoint that reads; returns its path. A damaged one (a file cut short by a
    full disk or a copy, bytes that are not what was saved) is skipped with a warning naming it and what was wrong,
    and the one before it is used: that is the run as it stood at that step, so nothing is mixed."""
    damaged: list[str] = []
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            restore(path)
        except DamagedCheckpoint as exc:
            damaged.append(f"{path.name} ({exc.reason})")
            continue
        except EdgeftError:
            raise  # a refusal (another process count...), not damage
        except Exception as exc:  # what torch.load and json raise on a cut or garbled file
            damaged.append(f"{path.name} ({_reason(exc)})")
            continue
        if damaged:
            warnings.warn(f"{out_dir}: checkpoint {', '.join(damaged)} cannot be read; resuming from {path.name}, "
                          "the last good one")
        return path
    raise EdgeftError(f"{out_dir}: no checkpoint can be read ({', '.join(damaged) or 'none saved'}); start again "
                      "with --overwrite")


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
    """What every checkpoint folder holds: the trainable weights and state.json. Weights that are no longer numbers
    are never saved: the checkpoint before stays the last good one."""
    import torch
    from safetensors.torch import save_file

    weights = trainable_state(model)
    for name, tensor in weights.items():
        if not bool(torch.isfinite(tensor).all()):
            refuse_diverged(float("nan"), state.get("step", 0), Path(folder).parent.parent, f"weight {name}")
    save_file(weights, str(folder / "trainable.safetensors"))
    (folder / "state.json").write_text(json.dumps(state, indent=1), encoding="utf-8")


def refuse_diverged(loss: float, step: int, out_dir: Path, what: str = "the loss") -> None:
    """Stop a run whose loss (or a trained weight) is no longer a finite number, in one line naming the step: every
    later step would only train NaN into the adapter. The checkpoints saved before stay as they are."""
    if math.isfinite(loss):
        return
    last = latest_checkpoint(out_dir)
    # Resuming with the same settings would replay the same batches into the same blow-up: the advice is a new run.
    kept = f"the last good checkpoint ({last.name}) is kept" if last is not None else "no checkpoint was saved before it"
    raise EdgeftError(f"training diverged at step {step}: {what} is {loss if what == 'the loss' else 'NaN or Inf'}; "
                      f"{kept}; lower lr (or clip with max_grad_norm) and start again with --overwrite")


def load_trainable_state(model, path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    try:
        saved = load_file(str(path))
    except Exception as exc:  # safetensors' errors on a cut or garbled file
        raise DamagedCheckpoint(path, _reason(exc)) from None
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
