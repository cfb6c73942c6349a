"""Safetensors by hand, without torch: read a checkpoint one tensor (or row range) at a time, write one tensor by
tensor. The converter, the adapter reader and the merge all go through this module.

The format is tiny: a u64 little-endian header length, a JSON header with dtype/shape/data_offsets per tensor, then
the raw little-endian bytes. We read each range with `readinto` into a fresh buffer rather than memory-mapping
(`safetensors.safe_open` maps the whole file): every page a mapping touches stays in the process's resident set until
the mapping goes away, whereas a plain read keeps peak RSS at the tensor (or row chunk) in hand.

bf16 has no numpy dtype: we carry it as uint16 bits and widen to float32 by placing them in the high half, which is
exact (bf16 is the top 16 bits of an IEEE float32).
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from convert.finite import refuse_non_finite
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

# safetensors dtype name -> numpy dtype of the stored bytes
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
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INDEX_NAME = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # a longer header is a corrupt length field, not a real header


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


def _read_header(path: Path) -> tuple[dict, int, int]:
    """(JSON header, byte offset where tensor data starts, file size)."""
    check_input_file(path, "re-save the model with safetensors")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) < 8:
                raise EdgeftError(f"{path}: truncated safetensors file (no header); re-download or re-save it")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > min(size - 8, MAX_HEADER_BYTES):
                raise EdgeftError(f"{path}: truncated or corrupt safetensors header; re-download or re-save it")
            header = json.loads(f.read(header_len))
    except OSError as exc:
        raise EdgeftError(f"{path}: not a readable safetensors file ({exc}); re-save it with safetensors") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgeftError(f"{path}: corrupt safetensors header ({exc}); re-download or re-save it") from exc
    return header, 8 + header_len, size


def _entry(path: Path, name: str, info: dict, data_start: int, size: int) -> TensorEntry:
    dtype = info.get("dtype")
    if dtype not in SAFETENSORS_DTYPES:
        raise EdgeftError(f"{path}: tensor {name} has unsupported dtype {dtype}; save the model as F32/F16/BF16")
    begin, end = info["data_offsets"]
    shape = tuple(int(d) for d in info["shape"])
    expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
    if end - begin != expected:
        raise EdgeftError(f"{path}: tensor {name} has {end - begin} bytes for shape {list(shape)}; the file is corrupt")
    if data_start + end > size:
        raise EdgeftError(f"{path}: truncated safetensors file (tensor {name} ends at byte {data_start + end}, "
                          f"file has {size}); re-download or re-save it")
    return TensorEntry(path, dtype, shape, data_start + begin, end - begin)


class SafetensorsFile:
    """One .safetensors file: its checked header, and positioned reads of row ranges (rows = first axis).
    Each read opens the file anew, so no handle outlives it."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header, data_start, size = _read_header(self.path)
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        # header order: what the converter walks; names() gives data order, what a streaming copy walks
        self.entries: dict[str, TensorEntry] = {
            name: _entry(self.path, name, info, data_start, size) for name, info in header.items()}

    def names(self) -> list[str]:
        """Tensor names in file order (by data offset), the order a streaming pass should follow."""
        return sorted(self.entries, key=lambda name: self.entries[name].start)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> str:
        """safetensors dtype name: F32, F16, BF16..."""
        return self.entries[name].dtype

    def _stored(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        entry = self.entries[name]
        rows = entry.shape[0] if entry.shape else 1
        row_bytes = entry.nbytes // rows if rows else 0
        stop = rows if stop is None else stop
        buf = np.empty((stop - start) * row_bytes, dtype=np.uint8)
        with open(entry.file, "rb") as f:
            f.seek(entry.start + start * row_bytes)
            got = f.readinto(memoryview(buf))
        if got != buf.nbytes:
            raise EdgeftError(f"{entry.file}: truncated while reading tensor {name}; re-download the model")
        return buf

    # Every tensor read comes through one of the two readers below, and each refuses NaN or Inf (convert.finite):
    # by the stored bits where the bytes are copied as they are, by the floats where they are decoded anyway.
    def read_bytes(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Raw little-endian bytes (a uint8 array) of rows [start, stop) of tensor `name`; a scalar is one row."""
        buf = self._stored(name, start, stop)
        refuse_non_finite(buf, name, str(self.entries[name].file), stored=self.entries[name].dtype)
        return buf

    def read_rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of the tensor, as float32 for floating types (bf16 widened exactly), else as stored."""
        entry = self.entries[name]
        stop = (entry.shape[0] if entry.shape else 1) if stop is None else stop
        stored = self._stored(name, start, stop).view(SAFETENSORS_DTYPES[entry.dtype])
        if entry.dtype == "BF16":
            out = bf16_to_float32(stored)
        elif entry.dtype in ("F16", "F64"):
            out = stored.astype(np.float32)
        else:
            out = stored
        refuse_non_finite(out, name, str(entry.file))
        return out.reshape((stop - start, *entry.shape[1:])) if entry.shape else out.reshape(())

    def read(self, name: str) -> np.ndarray:
        """The whole tensor, as read_rows gives it."""
        return self.read_rows(name)


def _weight_map(index: Path) -> dict[str, str]:
    try:
        return dict(json.loads(index.read_text())["weight_map"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise EdgeftError(f"{index}: not a valid safetensors index ({exc}); re-download the model") from exc


def shard_files(model_dir: Path) -> list[Path]:
    """The checkpoint's .safetensors files: those its index lists (all present), else every *.safetensors."""
    index = model_dir / INDEX_NAME
    if not index.exists():
        return sorted(model_dir.glob("*.safetensors"))
    files = sorted(set(_weight_map(index).values()))
    missing = [f for f in files if not (model_dir / f).exists()]
    if missing:
        raise EdgeftError(
            f"{model_dir}: shard {missing[0]} listed in {INDEX_NAME} is missing"
            f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; download all shards")
    return [model_dir / f for f in files]


class SafetensorsReader:
    """All tensors of a (possibly sharded) safetensors checkpoint, read lazily one at a time."""

    def __init__(self, model_dir: str | os.PathLike):
        self.model_dir = Path(model_dir)
        files = shard_files(self.model_dir)
        if not files:
            raise EdgeftError(f"{self.model_dir}: no *.safetensors weights found; save the model with safetensors "
                              "(save_pretrained(safe_serialization=True))")
        self.shards: dict[str, SafetensorsFile] = {path.name: SafetensorsFile(path) for path in files}
        self._file_of: dict[str, SafetensorsFile] = {}
        for shard in self.shards.values():
            for name in shard.entries:
                if name in self._file_of:
                    raise EdgeftError(f"{shard.path}: tensor {name} also appears in {self._file_of[name].path.name}")
                self._file_of[name] = shard
        index = self.model_dir / INDEX_NAME
        if index.exists():
            absent = sorted(set(_weight_map(index)) - set(self._file_of))
            if absent:
                raise EdgeftError(f"{index}: tensor {absent[0]} is listed but found in no shard; re-download the model")

    def weight_map(self) -> dict[str, str]:
        """tensor name -> shard file name; with an index, the index's map is the truth."""
        index = self.model_dir / INDEX_NAME
        if index.exists():
            return _weight_map(index)
        return {name: shard.path.name for shard in self.shards.values() for name in shard.names()}

    def names(self) -> list[str]:
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file_of[name].shape(name)

    def dtype(self, name: str) -> str:
        """safetensors dtype name: F32, F16, BF16..."""
        return self._file_of[name].dtype(name)

    def read(self, name: str) -> np.ndarray:
        """The whole tensor as float32 (floating types) or its stored integer type."""
        return self._file_of[name].read(name)

    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of the tensor along its first axis, as float32 for floating types."""
        return self._file_of[name].read_rows(name, start, stop)


class SafetensorsStreamWriter:
    """Writes a .safetensors file whose tensor list is known up front, tensor by tensor, in chunks.

    The header needs every offset, so the caller declares all (name, dtype, shape) first; `write` then appends
    bytes and `close` checks that every declared byte arrived, so a short write cannot pass for a complete file.
    """

    def __init__(self, path: Path, specs: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        self._order: list[tuple[str, int]] = []
        for name, dtype, shape in specs:
            size = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._order.append((name, size))
            offset += size
        self.total_bytes = offset
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # the reference writer pads the header to 8 bytes for alignment
        self._handle: BinaryIO = open(self.path, "wb")
        self._handle.write(struct.pack("<Q", len(encoded)) + encoded)
        self._position = 0  # index into _order
        self._written = 0  # bytes of the current tensor so far

    def write(self, name: str, data) -> None:
        """Append bytes (or any buffer, e.g. a uint8 numpy array) of tensor `name`."""
        expected, size = self._order[self._position]
        if name != expected:
            raise RuntimeError(f"safetensors writer: got {name}, expected {expected}")
        self._handle.write(data)
        self._written += memoryview(data).nbytes
        if self._written > size:
            raise RuntimeError(f"safetensors writer: {name} got {self._written} bytes, declared {size}")
        if self._written == size:
            self._position += 1
            self._written = 0

    def close(self) -> None:
        self._handle.close()
        if self._position != len(self._order):
            missing = self._order[self._position][0]
            raise RuntimeError(f"safetensors writer: {self.path.name} closed before tensor {missing} was complete")

    def __enter__(self) -> "SafetensorsStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._handle.close()
