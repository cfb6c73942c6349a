"""Safetensors without loading whole files: read row ranges of one tensor, write a file tensor by tensor.

Why our own: `safetensors.safe_open` maps the whole file, and every page a merge touches stays in the process's
resident set until the file is closed, so merging a shard would cost the shard's size in RSS on top of the output.
Plain `read()` calls at known offsets keep the footprint at one chunk. The format is tiny (8-byte little-endian
header length, a JSON header with dtype/shape/data_offsets per tensor, then the raw bytes), so doing it by hand is
short. No torch here: `convert.lora` uses this module too.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from convert.safetensors_file import bf16_to_float32
from edgeft.errors import EdgeftError

# safetensors dtype name -> bytes per element
DTYPE_SIZES: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
# numpy views for dtypes numpy has; BF16 is read as uint16 bits and widened by `convert.safetensors_file.bf16_to_float32`.
NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}


class SafetensorsFile:
    """Header of one .safetensors file plus positioned reads; opened per read so no handle leaks."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                (header_len,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(header_len))
        except (OSError, struct.error, ValueError) as exc:
            raise EdgeftError(f"{self.path}: not a readable safetensors file ({exc}); re-save it with safetensors") from exc
        self.metadata: dict[str, str] = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self.tensors: dict[str, dict] = header

    def names(self) -> list[str]:
        """Tensor names in file order (by data offset), the order a streaming pass should follow."""
        return sorted(self.tensors, key=lambda name: self.tensors[name]["data_offsets"][0])

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.tensors[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.tensors[name]["dtype"]

    def nbytes(self, name: str) -> int:
        start, stop = self.tensors[name]["data_offsets"]
        return stop - start

    def read_bytes(self, name: str, row_start: int = 0, row_stop: int | None = None) -> bytes:
        """Raw little-endian bytes of rows [row_start, row_stop) of tensor `name` (rows = first axis)."""
        info = self.tensors[name]
        shape = info["shape"]
        start, stop = info["data_offsets"]
        if shape:
            row_bytes = (stop - start) // shape[0] if shape[0] else 0
            row_stop = shape[0] if row_stop is None else row_stop
            start, stop = start + row_start * row_bytes, start + row_stop * row_bytes
        with open(self.path, "rb") as handle:
            handle.seek(self._data_start + start)
            data = handle.read(stop - start)
        if len(data) != stop - start:
            raise EdgeftError(f"{self.path}: tensor {name} is truncated; the file is incomplete, download it again")
        return data

    def read_numpy(self, name: str, row_start: int = 0, row_stop: int | None = None) -> np.ndarray:
        """Rows of a tensor as numpy; floating types come back as float32 (bf16 widened exactly)."""
        dtype = self.dtype(name)
        shape = list(self.shape(name))
        array = np.frombuffer(self.read_bytes(name, row_start, row_stop), dtype=NUMPY_DTYPES[dtype])
        if shape:
            shape[0] = (shape[0] if row_stop is None else row_stop) - row_start
        array = array.reshape(shape)
        if dtype == "BF16":
            return bf16_to_float32(array)
        if dtype in FLOAT_DTYPES:
            return array.astype(np.float32)
        return array.copy()


def read_index(model_dir: Path) -> dict[str, str]:
    """tensor name -> shard file name for a HF checkpoint folder (sharded with an index, or one file)."""
    index_path = model_dir / "model.safetensors.index.json"
    if index_path.exists():
        return dict(json.loads(index_path.read_text())["weight_map"])
    single = model_dir / "model.safetensors"
    if single.exists():
        return {name: single.name for name in SafetensorsFile(single).names()}
    if any(model_dir.glob("*.bin")) or any(model_dir.glob("*.pt")):
        raise EdgeftError(f"{model_dir}: only pickle checkpoints (.bin) found; re-save the model with "
                          "save_pretrained(safe_serialization=True)")
    raise EdgeftError(f"{model_dir}: no model.safetensors or model.safetensors.index.json; pass a HF model folder")


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
            size = math.prod(shape) * DTYPE_SIZES[dtype]
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
