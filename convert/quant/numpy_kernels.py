"""Pure-numpy quantizers for F16, BF16, Q8_0 and Q4_0, bit-identical to ggml's reference kernels.

Used when llama-cpp-python's `libggml-base` is not available (and always for F32/F16/BF16, where numpy is as fast
as ggml). Each function takes float32 rows `(..., n_per_row)` and returns what `GGUFWriter.add_tensor(...,
raw_dtype=qtype)` expects. Every float operation is done in float32, in the same order as the C code
(ggml/src/ggml-quants.c `quantize_row_q8_0_ref` / `quantize_row_q4_0_ref`, ggml-impl.h
`ggml_compute_fp32_to_bf16`), so the bytes match; tests/test_quant_kernels.py checks that against ggml itself.
"""

from __future__ import annotations

import numpy as np

QK8_0 = 32  # ggml block width for Q8_0 and Q4_0
QK4_0 = 32


def to_f16(rows: np.ndarray) -> np.ndarray:
    # numpy's float32->float16 cast rounds to nearest-even, like ggml's F16C path and its software fallback.
    return np.asarray(rows, dtype=np.float32).astype(np.float16)


def to_bf16_bytes(rows: np.ndarray) -> np.ndarray:
    """float32 rows -> bf16 as uint8 bytes (..., 2*n_per_row): round to nearest even; NaN forced quiet."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    bits = rows.view(np.uint32)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # uint32 wrap-around is intended: ggml adds in uint32 too, so +inf-adjacent values overflow the same way.
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(64)
    halves = np.where(is_nan, quiet_nan, rounded).astype(np.uint16)
    return halves.view(np.uint8).reshape(*rows.shape[:-1], rows.shape[-1] * 2)


def _roundf(values: np.ndarray) -> np.ndarray:
    # C roundf rounds halves away from zero; np.round rounds them to even. floor(a + 0.5) is not exact either
    # (0.49999997 + 0.5 rounds up to 1.0 in float32), so add the doubled fractional part instead: both steps exact.
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    return np.sign(values) * (whole + np.floor(2 * (magnitude - whole)))


def _blocks(rows: np.ndarray, block: int, name: str) -> tuple[np.ndarray, tuple[int, ...]]:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.shape[-1] % block:
        raise ValueError(f"{name}: row length {rows.shape[-1]} is not a multiple of {block}")
    return rows.reshape(-1, block), rows.shape


def _reciprocal(scale: np.ndarray) -> np.ndarray:
    # `id = d ? 1.0f/d : 0.0f` — in float32, like the C code.
    with np.errstate(divide="ignore"):
        return np.where(scale == 0, np.float32(0), np.float32(1) / scale).astype(np.float32)


def to_q8_0_bytes(rows: np.ndarray) -> np.ndarray:
    """Q8_0: per 32 values, fp16 scale amax/127 then 32 int8 = roundf(x / scale). 34 bytes per block."""
    blocks, shape = _blocks(rows, QK8_0, "Q8_0")
    scale = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    quants = _roundf(blocks * _reciprocal(scale)).astype(np.int8)
    packed = np.concatenate([scale.astype(np.float16).view(np.uint8), quants.view(np.uint8)], axis=1)
    return packed.reshape(*shape[:-1], shape[-1] // QK8_0 * 34)


def to_q4_0_bytes(rows: np.ndarray) -> np.ndarray:
    """Q4_0 (reference path, no imatrix): scale = (signed value of largest magnitude) / -8, 4-bit q = min(15,
    trunc(x/scale + 8.5)); low nibbles hold the first 16 values, high nibbles the last 16. 18 bytes per block."""
    blocks, shape = _blocks(rows, QK4_0, "Q4_0")
    # ggml keeps the first value whose |v| is strictly larger than all before it: argmax's first-hit rule.
    extreme = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    scale = (extreme / np.float32(-8)).astype(np.float32)
    shifted = (blocks * _reciprocal(scale)).astype(np.float32) + np.float32(8.5)
    quants = np.minimum(np.trunc(shifted).astype(np.int8), 15).astype(np.uint8)
    nibbles = quants[:, : QK4_0 // 2] | (quants[:, QK4_0 // 2 :] << np.uint8(4))
    packed = np.concatenate([scale.astype(np.float16).view(np.uint8), nibbles], axis=1)
    return packed.reshape(*shape[:-1], shape[-1] // QK4_0 * 18)


# GGMLQuantizationType name -> numpy quantizer (Q4_0 only without an imatrix; the caller checks).
NUMPY_QUANTIZERS = {
    "F16": to_f16,
    "BF16": to_bf16_bytes,
    "Q8_0": to_q8_0_bytes,
    "Q4_0": to_q4_0_bytes,
}
