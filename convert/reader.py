"""Lazy access to a checkpoint's tensors, one at a time, without torch.

safetensors is a JSON header (u64 little-endian length + JSON) followed by raw little-endian tensor bytes, so we
parse the header ourselves and read each tensor's byte range on demand. We read with `readinto` into a fresh
buffer rather than memory-mapping: touched pages of a mapping count towards the process's resident memory until
the mapping goes away, whereas a plain read keeps peak RSS at the size of the tensor (or row chunk) in hand.

bf16 has no numpy dtype: we carry it as uint16 bits and widen to float32 by shifting into the high half, which is
exact (bf16 is the top 16 bits of an IEEE float32).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgeft.errors import EdgeftError

# safetensors dtype name -> (numpy dtype of the stored bytes, bytes per element)
SAFETENSORS_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits; see bf16_to_float32
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

INDEX_NAME = "model.safetensors.index.json"
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """uint16 bf16 bits -> float32, exactly."""
    # Place the bits in the high half of each little-endian 32-bit word: one strided copy, no shift pass.
    out = np.zeros(bits.shape + (2,), dtype=np.uint16)
    out[..., 1] = bits
    return out.view(np.float32).reshape(bits.shape)


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str  # safetensors dtype name
    shape: tuple[int, ...]
    start: int  # absolute byte offset in file
    nbytes: int


def _read_header(path: Path) -> dict[str, TensorEntry]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise EdgeftError(f"{path}: truncated safetensors file (no header); re-download or re-save it")
        (header_len,) = struct.unpack("<Q", raw_len)
        if header_len > min(size - 8, 100 * 1024 * 1024):
            raise EdgeftError(f"{path}: truncated or corrupt safetensors header; re-download or re-save it")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdgeftError(f"{path}: corrupt safetensors header ({exc}); re-download or re-save it") from exc
    data_start = 8 + header_len
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in SAFETENSORS_DTYPES:
            raise EdgeftError(f"{path}: tensor {name} has unsupported dtype {dtype}; save the model as F32/F16/BF16")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if end - begin != expected:
            raise EdgeftError(f"{path}: tensor {name} has {end - begin} bytes for shape {list(shape)}; the file is corrupt")
        if data_start + end > size:
            raise EdgeftError(
                f"{path}: truncated safetensors file (tensor {name} ends at byte {data_start + end}, "
                f"file has {size}); re-download or re-save it")
        entries[name] = TensorEntry(path, dtype, shape, data_start + begin, end - begin)
    return entries


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise EdgeftError(f"{index}: not a valid safetensors index ({exc}); re-download the model") from exc
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (model_dir / f).exists()]
        if missing:
            raise EdgeftError(
                f"{model_dir}: shard {missing[0]} listed in {INDEX_NAME} is missing"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; download all shards")
        return [model_dir / f for f in files]
    return sorted(model_dir.glob("*.safetensors"))


class SafetensorsReader:
    """All tensors of a (possibly sharded) safetensors checkpoint, read lazily one at a time."""

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        files = _safetensors_files(self.model_dir)
        if not files:
            raise EdgeftError(f"{self.model_dir}: no *.safetensors weights found; save the model with safetensors")
        self._entries: dict[str, TensorEntry] = {}
        for path in files:
            for name, entry in _read_header(path).items():
                if name in self._entries:
                    raise EdgeftError(f"{path}: tensor {name} also appears in {self._entries[name].file.name}")
                self._entries[name] = entry
        index = self.model_dir / INDEX_NAME
        if index.exists():
            listed = set(json.loads(index.read_text())["weight_map"])
            absent = sorted(listed - set(self._entries))
            if absent:
                raise EdgeftError(f"{index}: tensor {absent[0]} is listed but found in no shard; re-download the model")

    def names(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name].shape

    def dtype(self, name: str) -> str:
        """safetensors dtype name: F32, F16, BF16..."""
        return self._entries[name].dtype

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (floating types) or its stored integer type."""
        return self.read_rows(name, 0, self.shape(name)[0] if self.shape(name) else 1)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor along its first axis, as float32 for floating types."""
        entry = self._entries[name]
        stored = SAFETENSORS_DTYPES[entry.dtype]
        shape = entry.shape or (1,)
        row_elems = math.prod(shape[1:])
        count = (stop - start) * row_elems
        buf = np.empty(count, dtype=stored)
        with open(entry.file, "rb") as f:
            f.seek(entry.start + start * row_elems * stored.itemsize)
            got = f.readinto(memoryview(buf).cast("B"))
        if got != buf.nbytes:
            raise EdgeftError(f"{entry.file}: truncated while reading tensor {name}; re-download the model")
        if entry.dtype == "BF16":
            out = bf16_to_float32(buf)
        elif entry.dtype in ("F16", "F64"):
            out = buf.astype(np.float32)
        else:
            out = buf
        out = out.reshape((stop - start, *shape[1:]))
        return out if entry.shape else out.reshape(())


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
        return tensor.numpy().copy()

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
