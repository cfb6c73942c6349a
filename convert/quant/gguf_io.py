"""GGUF -> GGUF quantization (what llama-quantize does), streaming one tensor at a time.

The input is memory-mapped (gguf_file.GGUFFile); each tensor is converted to float32 and quantized in row slabs
by a thread pool, written in order, and its input pages dropped before the next one — memory stays near a few
slabs. Metadata is copied byte for byte except general.file_type and general.quantization_version, which
llama-quantize rewrites too. KV and tensor order follow llama-quantize's, so the whole output file is byte-identical
to what llama-quantize writes for the same input.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from convert.quant.gguf_file import GGUFFile, TensorEntry
from convert.quant.policy import walk_order
from edgeft.errors import EdgeftError

GGUF_MAGIC = 0x46554747  # "GGUF" little-endian
GGUF_VERSION = 3
GGML_QNT_VERSION = 2  # llama.cpp stamps general.quantization_version with this
VALUE_UINT32 = 4  # GGUF value type
_DROPPED_KEYS = ("split.no", "split.count", "split.tensors.count")  # one output file, as llama-quantize writes
# Rows are converted and quantized in slabs of about this many values (8 MB as float32), one slab per worker at a
# time: the float32 copy of a 150k-row embedding never exists whole, and the to-float conversion runs in parallel.
SLAB_VALUES = 2 * 1024 * 1024


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _uint32_kv(key: str, value: int) -> bytes:
    return _pack_string(key) + struct.pack("<II", VALUE_UINT32, value)


def _pad(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _to_float(tensor: TensorEntry) -> Callable[[np.ndarray], np.ndarray]:
    """Stored rows (uint8 bytes) -> float32, exactly as ggml's to-float row functions do."""
    from gguf import GGMLQuantizationType as T

    from convert.quant import bf16_bits_to_f32

    if tensor.qtype == T.F32:
        return lambda raw: raw.view(np.float32)
    if tensor.qtype == T.F16:
        return lambda raw: raw.view(np.float16).astype(np.float32)
    if tensor.qtype == T.BF16:
        return lambda raw: bf16_bits_to_f32(raw.view(np.uint16))
    raise EdgeftError(
        f"{tensor.name}: requantizing from {tensor.qtype.name} is not supported (it compounds error); "
        "quantize from the F32/F16/BF16 GGUF instead"
    )


def _jobs(source: GGUFFile, ordered: list[TensorEntry], plan: dict, importance: dict | None):
    """(tensor, kind, work) in file order: "start", then "data" (bytes to copy) or "quantize" slabs, then "end"."""
    for tensor in ordered:
        target = plan[tensor.name]
        yield tensor, "start", None
        raw = source.data(tensor)
        if target == tensor.qtype:  # same type: copy the bytes
            yield tensor, "data", raw
        else:
            to_float = _to_float(tensor)
            values = (importance or {}).get(tensor.name)
            if values is not None and values.size != tensor.n_per_row:
                values = None  # token_embd: llama.cpp ignores a mismatched entry for it
            row_bytes = tensor.nbytes // max(1, int(np.prod(tensor.ggml_shape[1:])))
            rows = raw.reshape(-1, row_bytes)
            step = max(1, SLAB_VALUES // tensor.n_per_row)
            for start in range(0, len(rows), step):
                yield tensor, "quantize", (rows[start : start + step], to_float, target, values)
        del raw
        yield tensor, "end", None


def _ordered_map(pool: ThreadPoolExecutor, function, jobs, window: int):
    """Results of function(job) in job order, with at most `window` jobs in flight: parallel, bounded memory."""
    pending = deque()
    for job in jobs:
        pending.append(pool.submit(function, job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _model_shape(source: GGUFFile, path: Path) -> tuple[str, int, int]:
    arch = source.value("general.architecture")
    if arch is None:
        raise EdgeftError(f"{path}: no general.architecture key; this is not a model GGUF (an imatrix or LoRA?)")
    if source.value("general.type", "model") != "model":
        raise EdgeftError(f"{path}: general.type is {source.value('general.type')!r}; only model GGUFs can be quantized")
    n_layer = int(source.value(f"{arch}.block_count", 0))
    n_head = int(source.value(f"{arch}.attention.head_count", 0) or 0)
    n_head_kv = source.value(f"{arch}.attention.head_count_kv", n_head) or n_head
    if isinstance(n_head_kv, (list, tuple)):  # per layer (lfm2: 0 for conv layers); llama.cpp's n_gqa() reads layer 0
        n_head_kv = n_head_kv[0] if n_head_kv else n_head
    n_head_kv = int(n_head_kv)
    n_expert = int(source.value(f"{arch}.expert_count", 0) or 0)
    return arch, n_layer, (n_head // n_head_kv if n_head and n_head_kv else 1), n_expert


def _metadata(source: GGUFFile, file_type) -> list[bytes]:
    """Every KV entry verbatim, split keys dropped, and the two quantization stamps moved to the end — where
    llama.cpp's gguf_set_val (remove, then append) leaves them, so our header is byte-identical to llama-quantize's."""
    blobs = [source.kv_bytes(key) for key in source.kv
             if key not in _DROPPED_KEYS and key not in ("general.file_type", "general.quantization_version")]
    blobs.append(_uint32_kv("general.quantization_version", GGML_QNT_VERSION))
    blobs.append(_uint32_kv("general.file_type", int(file_type.gguf_file_type)))
    return blobs


def quantize_gguf(
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    file_type,
    *,
    imatrix: str | os.PathLike | dict | None = None,
    threads: int | None = None,
    progress: bool = False,
) -> Path:
    """Quantize a GGUF model file to `file_type` (a FileType or name like "Q4_K_M"); returns `out_path`.

    `imatrix`: a llama.cpp imatrix GGUF path or an already-loaded {name: importance} dict. The output appears only
    when complete (atomic rename). `progress` shows a tqdm bar on stderr.
    """
    from gguf import GGML_QUANT_SIZES
    from tqdm import tqdm

    from convert.quant import (default_threads, load_imatrix, parse_file_type, plan_tensor_types, quantize_tensor,
                               validate_imatrix)
    from edgeft.fsutil import atomic_file, refuse_own_input

    in_path, out_path = Path(in_path), Path(out_path)
    if isinstance(file_type, str):
        file_type = parse_file_type(file_type)
    if not in_path.is_file():
        raise EdgeftError(f"{in_path}: input GGUF not found; pass the F16/BF16/F32 GGUF made by `edgeft convert`")
    refuse_own_input(out_path, {"input GGUF": in_path,
                                "imatrix": imatrix if isinstance(imatrix, (str, os.PathLike)) else None})
    source = GGUFFile(in_path)
    arch, n_layer, n_gqa, n_expert = _model_shape(source, in_path)
    importance = load_imatrix(imatrix) if isinstance(imatrix, (str, os.PathLike)) else (imatrix or None)
    plan = plan_tensor_types(
        file_type, [(t.name, tuple(reversed(t.ggml_shape))) for t in source.tensors], arch=arch, n_layer=n_layer,
        n_gqa=n_gqa, has_imatrix=bool(importance), n_expert=n_expert, source_types={t.name: t.qtype for t in source.tensors},
    )
    # i-quants without an imatrix, or an imatrix of another model: one line, before the output exists.
    importance = validate_imatrix(file_type, plan, {t.name: t.n_per_row for t in source.tensors}, importance)
    sizes = {}
    for tensor in source.tensors:
        block, type_size = GGML_QUANT_SIZES[plan[tensor.name]]
        sizes[tensor.name] = int(np.prod(tensor.ggml_shape)) // block * type_size
    kv_blobs = _metadata(source, file_type)
    # llama-quantize writes tensors in its loader's order (layer, then name); so do we, for identical files.
    by_name = {t.name: t for t in source.tensors}
    ordered = [by_name[name] for name in walk_order(list(by_name))]
    alignment = source.alignment
    infos, offset = [], 0
    for tensor in ordered:
        infos.append(_pack_string(tensor.name) + struct.pack("<I", len(tensor.ggml_shape))
                     + struct.pack(f"<{len(tensor.ggml_shape)}Q", *tensor.ggml_shape)
                     + struct.pack("<IQ", int(plan[tensor.name]), offset))
        offset = _pad(offset + sizes[tensor.name], alignment)

    threads = threads or default_threads()

    def encode(job):
        tensor, kind, work = job
        if kind != "quantize":
            return job
        raw_rows, to_float, qtype, values = work
        encoded = quantize_tensor(to_float(raw_rows), qtype, imatrix=values, threads=1)
        return tensor, "data", np.ascontiguousarray(encoded).view(np.uint8).reshape(-1)

    try:
        bar = tqdm(total=sum(sizes.values()), unit="B", unit_scale=True, desc="quantize", disable=not progress,
                   leave=False)
        with bar, atomic_file(out_path) as tmp, open(tmp, "wb") as out, ThreadPoolExecutor(threads) as pool:
            out.write(struct.pack("<IIQQ", GGUF_MAGIC, GGUF_VERSION, len(infos), len(kv_blobs)))
            for blob in kv_blobs + infos:
                out.write(blob)
            data_start = _pad(out.tell(), alignment)
            # One job stream across all tensors, so both threads stay busy over tensor boundaries (a per-tensor
            # pool drains at the end of every tensor, which costs a core for most of a model's small tensors).
            for tensor, kind, payload in _ordered_map(pool, encode, _jobs(source, ordered, plan, importance),
                                                      window=4 * threads):
                if kind == "start":
                    bar.set_postfix_str(f"{tensor.name} -> {plan[tensor.name].name}", refresh=False)
                    out.write(b"\0" * (data_start + _pad(out.tell() - data_start, alignment) - out.tell()))
                    written = 0
                elif kind == "data":
                    out.write(memoryview(payload))
                    written += payload.size
                else:
                    if written != sizes[tensor.name]:
                        raise RuntimeError(f"{tensor.name}: produced {written} bytes, planned {sizes[tensor.name]}")
                    source.release(tensor)
                    bar.update(written)
            out.write(b"\0" * (data_start + _pad(out.tell() - data_start, alignment) - out.tell()))
    finally:
        source.close()
    return out_path
