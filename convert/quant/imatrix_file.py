"""llama.cpp's importance-matrix file (GGUF flavour), read and written without llama.cpp.

Format facts (llama.cpp tools/imatrix/imatrix.cpp save_imatrix, common/imatrix-loader.cpp):
- KV: general.type = "imatrix"; imatrix.datasets (array of str), imatrix.chunk_count (u32), imatrix.chunk_size (u32).
  llama-quantize refuses a GGUF imatrix that lacks any of the three imatrix.* keys ("missing imatrix metadata").
- Per weight tensor W (GGUF name, e.g. "blk.0.attn_q.weight"), two F32 tensors, names sorted:
  "W.in_sum2": ggml shape (n_per_row, n_mat) = numpy (n_mat, n_per_row): raw sums of squared input activations;
  "W.counts":  ggml shape (1, n_mat) = numpy (n_mat, 1): number of activation rows summed (as float).
  n_mat is 1 for dense weights, the expert count for MoE weights.
- The quantizer uses sums / round(count) in float32, and 1.0 for a zero count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from convert.gguf_reader import GGUFFile
from convert.common.jsonl import check_input_file
from convert.common.errors import EdgeftError

# llama.cpp's names for the two statistics tensors of weight W: "W.in_sum2" and "W.counts" (no gguf constant).
SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"


@dataclass
class ImatrixData:
    """Raw statistics: sums (n_mat, n_per_row) float32 and counts (n_mat,) per GGUF weight name."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def importance(self) -> dict[str, np.ndarray]:
        """What llama-quantize hands to ggml_quantize_chunk: sums / count per row group (float32), flattened."""
        result = {}
        for name, sums in self.sums.items():
            sums = np.asarray(sums, dtype=np.float32).reshape(len(self.counts[name]), -1)
            counts = np.rint(np.asarray(self.counts[name], dtype=np.float64)).astype(np.float32)[:, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                values = np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.float32(1))
            result[name] = values.astype(np.float32).reshape(-1)
        return result


def read_imatrix(path: str | os.PathLike) -> ImatrixData:
    path = Path(path)
    check_input_file(path, f"create one with `edgeft imatrix MODEL --data calib.jsonl -o {path}`",
                     missing="imatrix file not found")
    try:
        source = GGUFFile(path)
    except EdgeftError as exc:  # the legacy .dat format or garbage
        reason = str(exc).removeprefix(f"{path}: ")
        raise EdgeftError(f"{path}: not a GGUF imatrix ({reason}); regenerate it with `edgeft imatrix` or "
                          "llama-imatrix") from None
    with source:
        kind = source.value(gguf.Keys.General.TYPE)
        if kind not in (None, gguf.GGUFType.IMATRIX):
            raise EdgeftError(f"{path}: general.type is {kind!r}, not 'imatrix'; pass an imatrix file")
        data = ImatrixData(
            datasets=list(source.array(gguf.Keys.IMatrix.DATASETS, [])),
            chunk_count=int(source.value(gguf.Keys.IMatrix.CHUNK_COUNT) or 0),
            chunk_size=int(source.value(gguf.Keys.IMatrix.CHUNK_SIZE) or 0),
        )
        for tensor in source.tensors:
            if tensor.qtype != gguf.GGMLQuantizationType.F32:
                raise EdgeftError(f"{path}: tensor {tensor.name} is {tensor.qtype.name}, imatrix tensors must be F32")
            values = np.array(source.data(tensor).view(np.float32))
            if tensor.name.endswith(SUMS_SUFFIX):
                data.sums[tensor.name[: -len(SUMS_SUFFIX)]] = values.reshape(-1, tensor.n_per_row)
            elif tensor.name.endswith(COUNTS_SUFFIX):
                data.counts[tensor.name[: -len(COUNTS_SUFFIX)]] = values.reshape(-1)
    unmatched = sorted(set(data.sums) ^ set(data.counts))
    if unmatched:
        raise EdgeftError(f"{path}: tensor {unmatched[0]} has in_sum2 without counts (or the reverse); file is damaged")
    if not data.sums:
        raise EdgeftError(f"{path}: imatrix holds no tensors; regenerate it with more calibration data")
    return data


def write_imatrix(path: str | os.PathLike, data: ImatrixData) -> Path:
    """Write `data` in llama.cpp's layout, atomically."""
    from convert.gguf_writer import BulkGGUFWriter
    from convert.common.fsutil import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        writer = BulkGGUFWriter(tmp, arch="")  # imatrix files have no general.architecture
        writer.add_type(gguf.GGUFType.IMATRIX)
        writer.add_array(gguf.Keys.IMatrix.DATASETS, list(data.datasets))
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, int(data.chunk_count))
        writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, int(data.chunk_size))
        for name in sorted(data.sums):
            sums = np.ascontiguousarray(data.sums[name], dtype=np.float32)
            sums = sums.reshape(-1, sums.shape[-1])
            counts = np.asarray(data.counts[name], dtype=np.float32).reshape(sums.shape[0], 1)
            writer.add_tensor(name + SUMS_SUFFIX, sums)
            writer.add_tensor(name + COUNTS_SUFFIX, counts)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path
