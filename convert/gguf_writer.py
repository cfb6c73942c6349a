"""The one GGUF writer: gguf.GGUFWriter for the header, metadata and tensor table, then tensor data streamed in order.

Used by the converter (HF -> GGUF), the quantizer (GGUF -> GGUF) and the imatrix writer. Three things
gguf.GGUFWriter does not do for us:
- it packs metadata arrays one item at a time through a recursive helper, which takes seconds for a 150k-token
  vocabulary; we pack long string/int/float arrays in bulk (same bytes);
- it re-encodes every value; the quantizer copies KV entries byte for byte (RawValue), as llama-quantize does;
- it holds every tensor in memory until the end; we append each tensor's data as it is produced, with a small
  thread pool computing the next chunks (numpy, ggml and file I/O release the GIL) while the current one is written.
"""

from __future__ import annotations

import collections
import contextlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
from gguf import GGMLQuantizationType, GGUFEndian, GGUFValueType, GGUFWriter

from convert.output_space import room_for
from convert.common.fsutil import atomic_file

# (GGUF name, planned byte size, zero-argument jobs each returning the next encoded chunk of its data)
TensorJobs = tuple[str, int, Iterable[Callable[[], np.ndarray]]]


@dataclass(frozen=True)
class RawValue:
    """A KV value copied verbatim from another GGUF: its type and value bytes (GGUFFile.kv_value_bytes)."""

    blob: bytes


class BulkGGUFWriter(GGUFWriter):
    """GGUFWriter with bulk packing of long homogeneous metadata arrays and verbatim values (little-endian only).

    `arch=""` writes no general.architecture (imatrix files have none; the quantizer copies the source's in place).
    """

    def add_raw(self, key: str, value: RawValue) -> None:
        # The type given here is never packed: _pack_val writes the blob, which holds the stored type.
        self.add_key_value(key, value, GGUFValueType.ARRAY)

    def add_tensor_plan(self, name: str, shape: tuple[int, ...], qtype: GGMLQuantizationType, nbytes: int) -> None:
        """A tensor-info entry for data streamed later; `shape` in numpy order, in elements."""
        # With raw_dtype given, GGUFWriter converts the shape only for uint8 (byte) arrays; float32 means elements.
        self.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)

    def planned_size(self) -> int:
        """Bytes of the whole file: header, KV entries and tensor table packed as write_*_to_file will pack them
        (a tenth of a second for a 150k-token vocabulary), then each tensor's data padded to the alignment."""
        kv = sum(len(self._pack_val(key, GGUFValueType.STRING, add_vtype=False))
                 + len(self._pack_val(value.value, value.type, add_vtype=True, sub_type=value.sub_type))
                 for key, value in self.kv_data[0].items())
        # per tensor: name, n_dims (u32), the dims (u64 each), type (u32), offset (u64)
        table = sum(len(self._pack_val(name, GGUFValueType.STRING, add_vtype=False)) + 16 + 8 * len(info.shape)
                    for name, info in self.tensors[0].items())
        header = 4 + 4 + 8 + 8  # magic, version, tensor count, KV count
        return (self.ggml_pad(header + kv + table, self.data_alignment)
                + sum(self.ggml_pad(info.nbytes, self.data_alignment) for info in self.tensors[0].values()))

    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
        if isinstance(val, RawValue):
            return val.blob
        body = None
        if (vtype == GGUFValueType.ARRAY and sub_type is None and self.endianess == GGUFEndian.LITTLE
                and isinstance(val, (list, tuple)) and len(val) > 16):
            body = _bulk_array(val)
        if body is None:
            return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
        item_type, payload = body
        head = struct.pack("<I", GGUFValueType.ARRAY) if add_vtype else b""
        return head + struct.pack("<IQ", item_type, len(val)) + payload


def _bulk_array(values) -> tuple[GGUFValueType, bytes] | None:
    first = values[0]
    if isinstance(first, str) and all(isinstance(v, str) for v in values):
        encoded = [v.encode("utf-8") for v in values]
        return GGUFValueType.STRING, b"".join(struct.pack("<Q", len(e)) + e for e in encoded)
    if type(first) is int and all(type(v) is int for v in values):
        array = np.asarray(values, dtype=np.int64)
        if array.min() >= -(2 ** 31) and array.max() < 2 ** 31:  # what GGUFValueType.get_type calls INT32
            return GGUFValueType.INT32, array.astype("<i4").tobytes()
        return None
    if type(first) is float and all(type(v) is float for v in values):
        return GGUFValueType.FLOAT32, np.asarray(values, dtype="<f4").tobytes()
    return None


def ordered_results(pool: ThreadPoolExecutor, jobs: Iterable[tuple[object, Callable]], window: int) -> Iterator:
    """(tag, job()) for each (tag, job), in job order, with at most `window` jobs in flight: parallel, bounded
    memory. Jobs not yet run are cancelled when the consumer stops or a job fails."""
    pending: collections.deque = collections.deque()
    try:
        for tag, job in jobs:
            pending.append((tag, pool.submit(job)))
            if len(pending) >= window:
                tag, future = pending.popleft()
                yield tag, future.result()
        while pending:
            tag, future = pending.popleft()
            yield tag, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _flatten(tensors: Iterable[TensorJobs]):
    """((name, planned, is_last_chunk), job) across all tensors: one job stream, so the workers stay busy over
    tensor boundaries (a per-tensor pool drains at the end of every tensor, costing a core on small tensors)."""
    for name, planned, jobs in tensors:
        jobs = iter(jobs)
        job = next(jobs, None)
        while job is not None:
            following = next(jobs, None)
            yield (name, planned, following is None), job
            job = following


def stream_tensor_data(
    fout,
    tensors: Iterable[TensorJobs],
    *,
    alignment: int,
    workers: int = 2,
    window: int | None = None,
    on_bytes: Callable[[int], None] = lambda n: None,
    on_tensor: Callable[[str], None] = lambda name: None,
) -> None:
    """Append tensor data after the tensor-info table, each tensor padded to `alignment`.

    Jobs run ahead on `workers` threads, at most `window` (default 2*workers) in flight, and are written strictly
    in order; `on_tensor(name)` runs once a tensor's last chunk is written.
    """
    workers = max(1, workers)
    fout.write(b"\0" * (-fout.tell() % alignment))
    written = 0
    with ThreadPoolExecutor(max_workers=workers) as pool, \
            contextlib.closing(ordered_results(pool, _flatten(tensors), window or 2 * workers)) as results:
        for (name, planned, last), chunk in results:
            chunk = np.ascontiguousarray(chunk)
            fout.write(memoryview(chunk).cast("B"))
            written += chunk.nbytes
            on_bytes(chunk.nbytes)
            if last:
                if written != planned:
                    raise RuntimeError(f"{name}: produced {written} bytes, planned {planned}")
                fout.write(b"\0" * (-written % alignment))
                written = 0
                on_tensor(name)


def write_streamed(writer: BulkGGUFWriter, out_path: str | os.PathLike,
                   tensors: Callable[[object], Iterable[TensorJobs]], *, desc: str, progress: bool,
                   **stream_options) -> None:
    """Header, metadata and tensor table from `writer`, then the data from `tensors(bar)` (stream_tensor_data's
    options), into `out_path`, which appears only when complete. `bar` is the tqdm byte bar (shown when
    `progress`), opened once the output is: a refused output path is one line, without a bar before it. An output
    the disk has no room for is refused before its first byte (convert.output_space)."""
    from tqdm import tqdm

    with atomic_file(out_path) as tmp, room_for(out_path, writer.planned_size(), tmp):
        writer.open_output_file(tmp)
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            total = sum(info.nbytes for info in writer.tensors[0].values())
            with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
                stream_tensor_data(writer.fout[0], tensors(bar), alignment=writer.data_alignment,
                                   on_bytes=bar.update, **stream_options)
            writer.fout[0].flush()
        finally:
            writer.close()
