"""The one GGUF reader of convert/ and runtime/: KV entries as raw byte ranges, tensor infos, zero-copy tensor data.

gguf.GGUFReader decodes every KV value into numpy parts — for a 150k-token vocabulary that is ~300k small arrays,
seconds of CPU and hundreds of MB. The quantizer needs a handful of scalar values plus the KV bytes to copy
verbatim, the importer the arrays in bulk, runtime the header check; so this reader walks the header once with
struct and decodes a value only when asked. Layout facts: llama.cpp docs/gguf.md (little-endian); the constants
(magic, alignment, value types, type sizes, key names) are the gguf package's.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from convert.finite import refuse_non_finite
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

GGUF_MAGIC_BYTES = struct.pack("<I", gguf.GGUF_MAGIC)  # b"GGUF", the first four bytes of every GGUF file
# A file without the magic, by its name: what it most likely is, and what to do with it.
NOT_GGUF_SUFFIXES = {
    ".safetensors": "a safetensors checkpoint: convert its Hugging Face folder with `edgeft convert`",
    ".bin": "a PyTorch checkpoint: convert its Hugging Face folder with `edgeft convert`",
    ".pt": "a PyTorch checkpoint: convert its Hugging Face folder with `edgeft convert`",
    ".pth": "a PyTorch checkpoint: convert its Hugging Face folder with `edgeft convert`",
}
# Value type -> struct format of one element; STRING and ARRAY have variable length and are walked instead.
SCALAR_FORMATS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}


def tensor_nbytes(shape, qtype: GGMLQuantizationType) -> int:
    """Bytes of a tensor of `shape` (either order) stored as `qtype`: whole blocks, no padding."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    return int(np.prod(shape, dtype=np.int64)) // block * type_size


@dataclass(frozen=True)
class KVEntry:
    start: int  # byte range of the whole entry (key + type + value), to copy verbatim
    end: int
    value_type: GGUFValueType
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

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy / HF order."""
        return tuple(reversed(self.ggml_shape))


def refuse_not_gguf(path: Path) -> None:
    """The one line for a path that is no GGUF at all (missing, a folder, empty, other bytes), shown by every
    reader of GGUFs (runtime.check_gguf before llama.cpp, the quantizer, import, convert-lora's base)."""
    if not path.exists():
        raise EdgeftError(f"{path}: no such file; pass the path of a .gguf file (see `edgeft convert`)")
    if path.is_dir():
        raise EdgeftError(f"{path}: is a folder, not a GGUF file; a Hugging Face model folder converts with "
                          f"`edgeft convert {path}`")
    check_input_file(path, "pass the path of a .gguf file")  # a pipe or a device: read once, or never ending
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if magic == GGUF_MAGIC_BYTES:
        return
    if not magic:
        raise EdgeftError(f"{path}: not a GGUF file (the file is empty); check the path")
    advice = NOT_GGUF_SUFFIXES.get(path.suffix.lower(), "pass a .gguf made by edgeft or llama.cpp")
    raise EdgeftError(f"{path}: not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC_BYTES!r}); {advice}")


class GGUFFile:
    """Memory-mapped GGUF: `.kv` (key -> KVEntry), `.value(key)`, `.array(key)`, `.kv_bytes(key)`, `.tensors`,
    `.data(t)`, `.dequantize(t)`. Usable as a context manager (closes the mapping)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        refuse_not_gguf(self.path)
        with open(self.path, "rb") as handle:
            self._map = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
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

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _read_header(self) -> None:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", self._map, 4)
        if version < 2:
            raise EdgeftError(f"{self.path}: GGUF version {version} is too old; reconvert the model")
        if version > gguf.GGUF_VERSION:
            # A byte-swapped (big-endian) file reads as a huge version too; neither layout is one this reader knows.
            raise EdgeftError(f"{self.path}: GGUF version {version} (this reader knows 2 to {gguf.GGUF_VERSION}, "
                              "little-endian); the header is damaged or from a newer tool: fetch or convert it again")
        pos = 24
        self.kv: dict[str, KVEntry] = {}
        for _ in range(n_kv):
            start = pos
            key, pos = self._string(pos)
            value_type, value_start = self._value_type(pos), pos + 4
            pos = self._skip_value(value_type, value_start)
            self.kv[key] = KVEntry(start, pos, value_type, value_start)
        self.alignment = int(self.value(gguf.Keys.General.ALIGNMENT, gguf.GGUF_DEFAULT_ALIGNMENT))
        infos = []
        for _ in range(n_tensors):
            name, pos = self._string(pos)
            (n_dims,) = struct.unpack_from("<I", self._map, pos)
            shape = struct.unpack_from(f"<{n_dims}Q", self._map, pos + 4)
            qtype, offset = struct.unpack_from("<IQ", self._map, pos + 4 + 8 * n_dims)
            pos += 4 + 8 * n_dims + 12
            infos.append((name, tuple(int(d) for d in shape), GGMLQuantizationType(qtype), offset))
        data_start = (pos + self.alignment - 1) // self.alignment * self.alignment
        self.tensors: list[TensorEntry] = [
            TensorEntry(name, shape, qtype, data_start + offset, tensor_nbytes(shape, qtype))
            for name, shape, qtype, offset in infos
        ]
        needed = max((t.offset + t.nbytes for t in self.tensors), default=data_start)
        if needed > len(self._map):
            raise EdgeftError(f"{self.path}: truncated GGUF ({len(self._map)} bytes, its tensor table needs {needed}); "
                              "the download or copy was cut short, fetch or convert it again")

    def _value_type(self, pos: int) -> GGUFValueType:
        (value_type,) = struct.unpack_from("<I", self._map, pos)
        try:
            return GGUFValueType(value_type)
        except ValueError:
            raise EdgeftError(f"{self.path}: unknown GGUF value type {value_type}; the file is damaged or newer "
                              "than us") from None

    def _string(self, pos: int) -> tuple[str, int]:
        (length,) = struct.unpack_from("<Q", self._map, pos)
        return self._map[pos + 8 : pos + 8 + length].decode("utf-8"), pos + 8 + length

    def _skip_value(self, value_type: GGUFValueType, pos: int) -> int:
        if value_type in SCALAR_FORMATS:
            return pos + struct.calcsize(SCALAR_FORMATS[value_type])
        if value_type == GGUFValueType.STRING:
            (length,) = struct.unpack_from("<Q", self._map, pos)
            return pos + 8 + length
        item_type = self._value_type(pos)  # ARRAY: item type, count, items
        (count,) = struct.unpack_from("<Q", self._map, pos + 4)
        pos += 12
        if item_type in SCALAR_FORMATS:
            return pos + count * struct.calcsize(SCALAR_FORMATS[item_type])
        for _ in range(count):
            pos = self._skip_value(item_type, pos)
        return pos

    def value(self, key: str, default=None):
        """Decoded value of a scalar or string key; the first element of an array (per-layer head counts)."""
        entry = self.kv.get(key)
        if entry is None:
            return default
        value_type, pos = entry.value_type, entry.value_start
        if value_type == GGUFValueType.ARRAY:
            (count,) = struct.unpack_from("<Q", self._map, pos + 4)
            if count == 0:
                return default
            value_type, pos = self._value_type(pos), pos + 12
        if value_type == GGUFValueType.STRING:
            return self._string(pos)[0]
        if value_type in SCALAR_FORMATS:
            return struct.unpack_from(SCALAR_FORMATS[value_type], self._map, pos)[0]
        return default

    @property
    def arch(self) -> str | None:
        return self.value(gguf.Keys.General.ARCHITECTURE)

    def hparam(self, key: str, default=None):
        """`value` of a per-architecture key named as in gguf.Keys.LLM / Attention ("{arch}.block_count")."""
        return self.value(key.format(arch=self.arch), default)

    def array(self, key: str, default=None) -> list | None:
        """Every element of an array key (token lists, merges, scores), decoded in bulk; numbers as a Python list."""
        entry = self.kv.get(key)
        if entry is None:
            return default
        if entry.value_type != GGUFValueType.ARRAY:
            raise EdgeftError(f"{self.path}: metadata {key} is not an array; the file is damaged or not a model GGUF")
        item_type = self._value_type(entry.value_start)
        (count,) = struct.unpack_from("<Q", self._map, entry.value_start + 4)
        pos = entry.value_start + 12
        if item_type in SCALAR_FORMATS:
            dtype = np.dtype(SCALAR_FORMATS[item_type])
            return np.frombuffer(self._map, dtype=dtype, count=count, offset=pos).tolist()
        if item_type == GGUFValueType.STRING:
            items = []
            for _ in range(count):
                text, pos = self._string(pos)
                items.append(text)
            return items
        raise EdgeftError(f"{self.path}: metadata {key} is an array of arrays; not something a model GGUF holds")

    def kv_bytes(self, key: str) -> bytes:
        """The whole entry (key, type, value) as stored."""
        entry = self.kv[key]
        return self._map[entry.start : entry.end]

    def kv_value_bytes(self, key: str) -> bytes:
        """The entry's type and value as stored, for a writer that packs the key itself (gguf_writer.RawValue)."""
        entry = self.kv[key]
        return self._map[entry.value_start - 4 : entry.end]

    def data(self, tensor: TensorEntry) -> np.ndarray:
        """Zero-copy uint8 view of the tensor's bytes."""
        return np.frombuffer(self._map, dtype=np.uint8, count=tensor.nbytes, offset=tensor.offset)

    def dequantize(self, tensor: TensorEntry, rows: int | None = None) -> np.ndarray:
        """The first `rows` rows (all when None) as float32 (rows, width), dequantized by the gguf package whatever
        the type; a type it cannot read is one line."""
        row_bytes = tensor_nbytes((tensor.n_per_row,), tensor.qtype)
        raw = self.data(tensor)
        raw = (raw if rows is None else raw[: rows * row_bytes]).reshape(-1, row_bytes)
        try:
            values = gguf.quants.dequantize(raw, tensor.qtype)
        except NotImplementedError as exc:
            raise EdgeftError(f"tensor {tensor.name}: type {tensor.qtype.name} cannot be dequantized by the gguf "
                              f"package ({exc}); requantize the GGUF to another type first") from None
        values = np.asarray(values, dtype=np.float32)
        refuse_non_finite(values, tensor.name, str(self.path))  # what `edgeft import` writes comes through here
        return values

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
