"""The weights of a model folder, one tensor at a time: safetensors always (see `convert.safetensors_file`), a
PyTorch pickle only when the user allowed it explicitly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from convert.finite import refuse_non_finite
from convert.safetensors_file import INDEX_NAME, SafetensorsReader
from convert.common.errors import EdgeftError

PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


class PickleReader:
    """PyTorch pickle checkpoints (`pytorch_model*.bin`). Loading a pickle can run arbitrary code, so this is only
    used behind `--allow-pickle`; it needs torch (the `train` extra) and holds one shard in memory at a time."""

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        try:
            import torch  # noqa: F401  (only on the explicit --allow-pickle path)
        except ImportError as exc:
            raise EdgeftError("--allow-pickle needs torch: pip install 'edgeft[train]', or convert the weights to safetensors") from exc
        files: list[Path] = []
        for pattern in PICKLE_PATTERNS:
            files += sorted(self.model_dir.glob(pattern))
        self._file_of: dict[str, Path] = {}
        self._meta: dict[str, tuple[str, tuple[int, ...]]] = {}
        for path in files:
            for name, tensor in self._load(path).items():
                self._file_of[name] = path
                self._meta[name] = (str(tensor.dtype).replace("torch.", ""), tuple(tensor.shape))
        self._cached: tuple[Path, dict] | None = None

    @staticmethod
    def _load(path: Path) -> dict:
        import pickle

        import torch

        # weights_only refuses arbitrary objects and loads every ordinary state dict; only a checkpoint that needs
        # more falls back to a full unpickle, which the user allowed explicitly with --allow-pickle.
        try:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except pickle.UnpicklingError:
            return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except Exception as exc:
            raise EdgeftError(f"{path}: cannot read this pickle checkpoint ({exc}); convert it to safetensors") from exc

    def names(self) -> list[str]:
        return list(self._meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._meta[name][1]

    def dtype(self, name: str) -> str:
        return {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(self._meta[name][0], self._meta[name][0])

    def read(self, name: str) -> np.ndarray:
        import torch

        path = self._file_of[name]
        if self._cached is None or self._cached[0] != path:
            self._cached = (path, self._load(path))
        tensor = self._cached[1][name]
        if tensor.is_floating_point():
            tensor = tensor.to(torch.float32)
        values = tensor.numpy().copy()
        refuse_non_finite(values, name, str(path))  # as safetensors' reader does for every tensor it reads
        return values

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        return self.read(name)[start:stop]


def open_weights(model_dir: str | os.PathLike, *, allow_pickle: bool = False):
    """The reader for a model folder: safetensors always; pickle only when explicitly allowed."""
    model_dir = Path(model_dir)
    if (model_dir / INDEX_NAME).exists() or any(model_dir.glob("*.safetensors")):
        return SafetensorsReader(model_dir)
    pickles = [p for pattern in PICKLE_PATTERNS for p in model_dir.glob(pattern)]
    if pickles:
        if not allow_pickle:
            raise EdgeftError(
                f"{model_dir}: only pickle weights ({pickles[0].name}) found; loading a pickle can run arbitrary code. "
                "Convert them to safetensors, or pass --allow-pickle if you trust the source")
        return PickleReader(model_dir)
    raise EdgeftError(f"{model_dir}: no model weights (*.safetensors) found; point at a Hugging Face model folder")


def iter_row_chunks(shape: tuple[int, ...], max_elements: int) -> Iterator[tuple[int, int]]:
    """Row ranges [start, stop) covering the first axis so that each chunk holds at most ~max_elements values."""
    rows = shape[0] if shape else 1
    row_elems = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, max_elements // max(1, row_elems))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)
