"""ctypes binding to ggml's exported quantizer, `ggml_quantize_chunk`, in llama-cpp-python's `libggml-base`.

Calling the very routine llama-quantize calls is what makes our bytes llama.cpp's bytes. ggml quantizes each row
independently (blocks never straddle rows), so splitting the rows across threads gives the same bytes as one call;
ctypes drops the GIL for the duration of a foreign call, so a plain thread pool really runs in parallel.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from convert.gguf_reader import tensor_nbytes

# Where to look for the library, first hit wins. EDGEFT_GGML_LIB lets a user point at their own llama.cpp build.
# The soname first: libllama loads "libggml-base.so.0", and the wheel ships it as a separate copy of the file, so
# loading "libggml-base.so" would give the process a second ggml — with its own i-quant grid tables, whose set-up
# (ggml_quantize_init) costs seconds per type.
_LIB_NAMES = ("libggml-base.so.0", "libggml-base.so", "libggml-base.dylib", "ggml-base.dll")

# A thread gets at least this many values per call, so tiny tensors do not pay thread overhead for nothing
# (llama.cpp uses 32*512 as its minimum chunk for the same reason).
_MIN_VALUES_PER_TASK = 32 * 512


def _candidate_paths() -> list[Path]:
    paths = []
    if os.environ.get("EDGEFT_GGML_LIB"):
        paths.append(Path(os.environ["EDGEFT_GGML_LIB"]))
    try:
        spec = importlib.util.find_spec("llama_cpp")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        lib_dir = Path(spec.origin).parent / "lib"
        paths.extend(lib_dir / name for name in _LIB_NAMES)
    return paths


@functools.lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL | None:
    """The ggml base library with argtypes set, or None when llama-cpp-python (or EDGEFT_GGML_LIB) is absent."""
    for path in _candidate_paths():
        if not path.is_file():
            continue
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int,  # enum ggml_type
            ctypes.c_void_p,  # const float * src
            ctypes.c_void_p,  # void * dst
            ctypes.c_int64,  # start (element index; we always pass 0 and offset the pointers instead)
            ctypes.c_int64,  # nrows
            ctypes.c_int64,  # n_per_row
            ctypes.c_void_p,  # const float * imatrix (NULL for none)
        ]
        lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
        lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
        lib.ggml_quantize_init.restype = None
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
        return lib
    return None


def default_threads() -> int:
    """Cores this process may run on (affinity-aware: containers often allow fewer than os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def available() -> bool:
    return load_library() is not None


def ggml_quantize(
    rows: np.ndarray,
    qtype: GGMLQuantizationType,
    *,
    imatrix: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Quantize float32 rows (nrows, n_per_row) with ggml; returns uint8 (nrows, bytes per row)."""
    lib = load_library()
    if lib is None:
        raise RuntimeError("libggml-base not found (install llama-cpp-python or set EDGEFT_GGML_LIB)")
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise ValueError(f"ggml_quantize wants 2-D rows, got shape {rows.shape}")
    nrows, n_per_row = rows.shape
    block_size, _ = GGML_QUANT_SIZES[qtype]
    if n_per_row % block_size:
        raise ValueError(f"{qtype.name}: row length {n_per_row} is not a multiple of its block size {block_size}")
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix has shape {imatrix.shape}, expected ({n_per_row},)")
    elif lib.ggml_quantize_requires_imatrix(int(qtype)):
        raise ValueError(f"{qtype.name} requires an importance matrix")

    out_row = tensor_nbytes((n_per_row,), qtype)
    out = np.empty((nrows, out_row), dtype=np.uint8)
    if nrows == 0:
        return out
    # ggml_quantize_chunk initialises the i-quant grid tables itself (under ggml's critical section), but doing it
    # here once, up front, keeps that one-time cost out of the timed worker calls.
    lib.ggml_quantize_init(int(qtype))
    imatrix_ptr = imatrix.ctypes.data if imatrix is not None else None
    src_base, dst_base = rows.ctypes.data, out.ctypes.data
    src_stride, dst_stride = n_per_row * 4, out_row

    def quantize_slice(bounds: tuple[int, int]) -> int:
        first, count = bounds
        return lib.ggml_quantize_chunk(
            int(qtype), src_base + first * src_stride, dst_base + first * dst_stride, 0, count, n_per_row, imatrix_ptr
        )

    threads = max(1, threads or default_threads())
    rows_per_task = max(1, -(-_MIN_VALUES_PER_TASK // n_per_row))
    tasks = max(1, min(threads * 4, -(-nrows // rows_per_task)))
    rows_per_task = -(-nrows // tasks)
    slices = [(first, min(rows_per_task, nrows - first)) for first in range(0, nrows, rows_per_task)]
    if threads == 1 or len(slices) == 1:
        written = sum(quantize_slice(s) for s in slices)
    else:
        with ThreadPoolExecutor(max_workers=min(threads, len(slices))) as pool:
            written = sum(pool.map(quantize_slice, slices))
    if written != out.nbytes:  # a mismatch means the library disagrees with gguf-py's size table: stop loudly
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {qtype.name}, expected {out.nbytes}")
    return out
