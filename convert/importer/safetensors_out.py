"""Streaming safetensors writer: the header is known from the shapes alone, so each tensor is produced, written and
dropped in turn (peak memory: one tensor). float32 as is; bf16 by the converter's own BF16 quantizer (gguf.quants,
ggml_compute_fp32_to_bf16's rounding) and stored as raw uint16 bits (numpy has no bf16), the inverse of
convert.safetensors_file.bf16_to_float32. Shards past MAX_SHARD_BYTES, with the model.safetensors.index.json
transformers reads. Every byte but the tensor data is laid out before the first write, so an output the disk cannot
hold is refused before it starts (convert.output_space)."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from convert.output_space import room_for
from convert.quant.numpy_kernels import NUMPY_QUANTIZERS
from convert.safetensors_file import INDEX_NAME

DTYPES = {"f32": ("F32", 4), "bf16": ("BF16", 2)}
MAX_SHARD_BYTES = 4 * 1024 ** 3


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits (uint16), by the quantizer `edgeft convert --outtype bf16` uses: one rounding rule, so both
    give the same bits for every input (round to nearest even; a NaN keeps its sign and payload, made quiet)."""
    values = np.asarray(values, dtype=np.float32)
    if not values.size:
        return np.zeros(values.shape, dtype=np.uint16)
    rows = np.ascontiguousarray(values.reshape(-1, values.shape[-1] if values.ndim else 1))  # rows: bounded temporaries
    return NUMPY_QUANTIZERS["BF16"](rows).view("<u2").reshape(values.shape)


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "bf16":
        return float32_to_bf16(values)
    return np.ascontiguousarray(values, dtype="<f4")


def write_safetensors(out_dir: Path, tensors: Iterable[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]],
                      *, dtype: str = "f32",
                      on_written: Callable[[str], None] = lambda name: None,
                      output: Path | None = None, reserve: int = 0) -> list[Path]:
    """Write (name, shape, produce) tensors, in order, as model.safetensors or shards; return the files written.
    `on_written(name)` runs once each tensor's bytes are out (to release its source pages, advance a bar).
    The disk must hold every file plus `reserve` bytes (what the caller writes beside them), or nothing is written;
    `output` is what messages call the folder (the user's -o, when `out_dir` is its temporary stand-in)."""
    tag, itemsize = DTYPES[dtype]
    files, index = _layout(list(tensors), tag, itemsize, MAX_SHARD_BYTES)
    planned = sum(8 + len(blob) + data for _, blob, _, data in files) + len(index or b"")
    with room_for(output or out_dir, planned + reserve, out_dir):
        for file_name, blob, shard, _ in files:
            with open(out_dir / file_name, "wb") as f:
                f.write(struct.pack("<Q", len(blob)) + blob)
                for name, shape, produce in shard:
                    data = _encode(produce(), dtype)
                    if data.shape != tuple(shape):
                        raise RuntimeError(f"{name}: produced shape {data.shape}, planned {tuple(shape)}")
                    f.write(memoryview(data).cast("B"))
                    del data
                    on_written(name)
        if index is not None:
            (out_dir / INDEX_NAME).write_bytes(index)
    return [out_dir / file_name for file_name, *_ in files]


def _layout(tensors: list, tag: str, itemsize: int, max_shard_bytes: int):
    """([(file name, header blob, its tensors, data bytes)], the index file's bytes or None for one file): every
    byte but the tensor data, fixed before the first write."""
    shards: list[list] = [[]]
    size = 0
    for entry in tensors:
        nbytes = math.prod(entry[1]) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    files, weight_map, total = [], {}, 0
    for file_name, shard in zip(names, shards):
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape, _ in shard:
            nbytes = math.prod(shape) * itemsize
            header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = file_name
        total += offset
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # tensor data starts 8-byte aligned
        files.append((file_name, blob, shard, offset))
    if len(names) == 1:
        return files, None
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    return files, (json.dumps(index, indent=2) + "\n").encode()
