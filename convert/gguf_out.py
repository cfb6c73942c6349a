"""Writing the GGUF: gguf.GGUFWriter for the header, metadata and tensor table, then tensor data streamed in order.

Two things gguf.GGUFWriter does not do for us:
- it packs metadata arrays one item at a time through a recursive helper, which takes seconds for a 150k-token
  vocabulary; we pack long string/int/float arrays in bulk (same bytes);
- it holds every tensor in memory until the end; we append each tensor's data as it is produced, with a small
  thread pool computing the next chunks (numpy and file I/O release the GIL) while the current one is written.
"""

from __future__ import annotations

import collections
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

import numpy as np
from gguf import GGUFEndian, GGUFValueType, GGUFWriter


class BulkGGUFWriter(GGUFWriter):
    """GGUFWriter with bulk packing of long homogeneous metadata arrays (little-endian files only)."""

    def _pack_val(self, val, vtype, add_vtype, sub_type=None) -> bytes:
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


def stream_tensor_data(
    fout,
    tensors: Iterable[tuple[str, int, Iterator[Callable[[], np.ndarray]]]],
    *,
    alignment: int,
    workers: int = 2,
    on_bytes: Callable[[int], None] = lambda n: None,
) -> None:
    """Append tensor data after the tensor-info table.

    `tensors`: (name, planned byte size, iterator of zero-argument jobs each returning the next encoded chunk).
    Jobs run ahead on `workers` threads, at most 2*workers in flight, and are written strictly in order.
    """
    fout.write(b"\0" * (-fout.tell() % alignment))
    pending: collections.deque = collections.deque()

    def drain_one() -> None:
        name, future, last, planned, written_before = pending.popleft()
        chunk = np.ascontiguousarray(future.result())
        fout.write(memoryview(chunk).cast("B"))
        written = written_before[0] + chunk.nbytes
        written_before[0] = written
        on_bytes(chunk.nbytes)
        if last:
            if written != planned:
                raise RuntimeError(f"{name}: produced {written} bytes, planned {planned}")
            fout.write(b"\0" * (-written % alignment))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for name, planned, jobs in tensors:
                counter = [0]  # bytes written so far for this tensor, shared by its queue entries
                jobs = iter(jobs)
                job = next(jobs, None)
                while job is not None:
                    following = next(jobs, None)
                    pending.append((name, pool.submit(job), following is None, planned, counter))
                    while len(pending) > 2 * max(1, workers):
                        drain_one()
                    job = following
            while pending:
                drain_one()
        finally:
            for entry in pending:
                entry[1].cancel()
