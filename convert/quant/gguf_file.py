"""A lean GGUF reader for requantization: KV entries as raw byte ranges, tensor infos, zero-copy tensor data.

gguf.GGUFReader decodes every KV value into numpy parts — for a 150k-token vocabulary that is ~300k small arrays,
seconds of CPU and hundreds of MB. Quantizing only needs a handful of scalar values plus the KV bytes to copy
verbatim, so this reader walks the header once with struct and decodes a value only when asked.
Layout facts: llama.cpp docs/gguf.md (version 3, little-endian).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from edgeft.errors import EdgeftError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
# GGUF value type -> struct format of one element; 8 = string, 9 = array.
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9


@dataclass(frozen=True)
class KVEntry:
    start: int  # byte range of the whole entry (key + type + value), to copy verbatim
    end: int
    value_type: int
    value_start: int


@dataclass(frozen=True)
class TensorEntry:
    name: str
    ggml_shape: tuple[int, ...]  # ne0 (contiguous) first
    qtype: GGMLQuantizationType
    offset: int  # absolute, in the file
    nbytes: int

    @property
    def n_per_row(self) -> int:
        return self.ggml_shape[0]


class GGUFFile:
    """Memory-mapped GGUF: `.kv` (key -> KVEntry), `.value(key)`, `.kv_bytes(key)`, `.tensors`, `.data(t)`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with open(self.path, "rb") as handle:
            try:
                self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError as exc:  # empty file
                raise EdgeftError(f"{self.path}: empty file, not a GGUF; check the path") from exc
        if self._map[:4] != GGUF_MAGIC:
            raise EdgeftError(f"{self.path}: not a GGUF file (bad magic); pass a .gguf made by edgeft or llama.cpp")
        try:
            self._read_header()
        except (struct.error, UnicodeDecodeError, ValueError, KeyError) as exc:
            # A cut file ends inside the header (struct runs out of bytes); anything else there is damage.
            self._map.close()
            if isinstance(exc, struct.error):
                raise EdgeftError(f"{self.path}: truncated GGUF (the file ends inside its header); the download "
                                  "or copy was cut short, fetch or convert it again") from None
            raise EdgeftError(f"{self.path}: corrupt GGUF header ({exc}); fetch or convert it again") from None
        except EdgeftError:
            self._map.close()
            raise

    def _read_header(self) -> None:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._map, 4)
        if version < 2:
            raise EdgeftError(f"{self.path}: GGUF version {version} is too old; reconvert the model")
        pos = 24
        self.kv: dict[str, KVEntry] = {}
        for _ in range(n_kv):
            start = pos
            key, pos = self._string(pos)
            (value_type,) = struct.unpack_from("<I", self._map, pos)
            value_start = pos + 4
            pos = self._skip_value(value_type, value_start)
            self.kv[key] = KVEntry(start, pos, value_type, value_start)
        alignment = int(self.value("general.alignment", DEFAULT_ALIGNMENT))
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", self._map, pos)
            shape = struct.unpack_from(f"<{n_dims}Q", self._map, pos + 4)
            qtype, offset = struct.unpack_from("<IQ", self._map, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in shape), GGMLQuantizationType(qtype), offset))
        data_start = (pos + alignment - 1) // alignment * alignment
        self.alignment = alignment
        self.tensors: list[TensorEntry] = []
        for name, shape, qtype, offset in infos:
            block, type_size = GGML_QUANT_SIZES[qtype]
            nbytes = int(np.prod(shape)) // block * type_size
            self.tensors.append(TensorEntry(name, shape, qtype, data_start + offset, nbytes))
        needed = max((t.offset + t.nbytes for t in self.tensors), default=data_start)
        if needed > len(self._map):
            raise EdgeftError(f"{self.path}: truncated GGUF ({len(self._map)} bytes, its tensor table needs {needed}); "
                              "the download or copy was cut short, fetch or convert it again")

    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._map, pos)
        return self._map[pos + 8 : pos + 8 + length].decode("utf-8"), pos + 8 + length

    def _skip_value(self, value_type: int, pos: int) -> int:
        if value_type in SCALAR_FORMATS:
            return pos + struct.calcsize(SCALAR_FORMATS[value_type])
        if value_type == STRING:
            (length,) = struct.unpack_from("<Q", self._map, pos)
            return pos + 8 + length
        if value_type == ARRAY:
            item_type, count = struct.unpack_from("<IQ", self._map, pos)
            pos += 12
            if item_type in SCALAR_FORMATS:
                return pos + count * struct.calcsize(SCALAR_FORMATS[item_type])
            for _ in range(count):
                pos = self._skip_value(item_type, pos)
            return pos
        raise EdgeftError(f"{self.path}: unknown GGUF value type {value_type}; the file is damaged or newer than us")

    def value(self, key: str, default=None):
        """Decoded value of a scalar or string key; the first element of an array (per-layer head counts)."""
        entry = self.kv.get(key)
        if entry is None:
            return default
        value_type, pos = entry.value_type, entry.value_start
        if value_type == ARRAY:
            item_type, count = struct.unpack_from("<IQ", self._map, pos)
            if count == 0:
                return default
            value_type, pos = item_type, pos + 12
        if value_type == STRING:
            return self._string(pos)[0]
        if value_type in SCALAR_FORMATS:
            return struct.unpack_from(SCALAR_FORMATS[value_type], self._map, pos)[0]
        return default

    def array(self, key: str, default=None) -> list | None:
        """Every element of an array key (token lists, merges, scores), decoded in bulk; numbers as a Python list."""
        entry = self.kv.get(key)
        if entry is None:
            return default
        if entry.value_type != ARRAY:
            raise EdgeftError(f"{self.path}: metadata {key} is not an array; the file is damaged or not a model GGUF")
        item_type, count = struct.unpack_from("<IQ", self._map, entry.value_start)
        pos = entry.value_start + 12
        if item_type in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[item_type])
            return np.frombuffer(self._map, dtype=dtype, count=count, offset=pos).tolist()
        if item_type == STRING:
            items = []
            for _ in range(count):
                text, pos = self._string(pos)
                items.append(text)
            return items
        raise EdgeftError(f"{self.path}: metadata {key} is an array of arrays; not something a model GGUF holds")

    def kv_bytes(self, key: str) -> bytes:
        entry = self.kv[key]
        return self._map[entry.start : entry.end]

    def data(self, tensor: TensorEntry) -> np.ndarray:
        """Zero-copy uint8 view of the tensor's bytes."""
        return np.frombuffer(self._map, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)

    def release(self, tensor: TensorEntry) -> None:
        """Drop the tensor's pages from the mapping once used, so resident memory stays near one tensor."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = -(-tensor.offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside this tensor only
        stop = (tensor.offset + tensor.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            self._map.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a caller still holds a view; the mapping goes when it does
            pass
