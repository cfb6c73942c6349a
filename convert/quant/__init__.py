"""Quantization: llama.cpp's file types, its per-tensor type policy, and its kernels.

    ft = parse_file_type("q4_k_m")
    types = plan_tensor_types(ft, [(name, shape), ...], arch="llama", n_layer=32, n_gqa=4)
    raw = quantize_tensor(array, types[name])          # feed to GGUFWriter.add_tensor(name, raw, raw_dtype=...)

Kernels: ggml's own `ggml_quantize_chunk` (through ctypes, kernels.py) when llama-cpp-python is installed, so the
bytes are llama-quantize's; a pure-numpy path (numpy_kernels.py) for F16/BF16/Q8_0/Q4_0 otherwise, bit-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from convert.quant import kernels, numpy_kernels, policy
from convert.quant.kernels import default_threads
from edgeft.errors import EdgeftError


@dataclass(frozen=True)
class FileType:
    """A llama.cpp file type ("Q4_K_M"): the value stored in general.file_type and its base tensor type."""

    name: str
    gguf_file_type: LlamaFileType
    default_type: GGMLQuantizationType
    description: str

    @property
    def is_quantized(self) -> bool:
        return self.default_type not in (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)


# The menu, largest first. Base types from llama.cpp's llama_ftype_get_default_type; the _S/_M variants differ
# only in the per-tensor upgrades in policy.RULES.
_Q = GGMLQuantizationType
_F = LlamaFileType
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("F32", _F.ALL_F32, _Q.F32, "32-bit float, no loss"),
        FileType("F16", _F.MOSTLY_F16, _Q.F16, "16-bit float"),
        FileType("BF16", _F.MOSTLY_BF16, _Q.BF16, "bfloat16, the usual training dtype"),
        FileType("Q8_0", _F.MOSTLY_Q8_0, _Q.Q8_0, "8.5 bits/weight, near-lossless"),
        FileType("Q6_K", _F.MOSTLY_Q6_K, _Q.Q6_K, "6.6 bits/weight"),
        FileType("Q5_K_M", _F.MOSTLY_Q5_K_M, _Q.Q5_K, "5.5 bits/weight, attn_v/ffn_down upgraded"),
        FileType("Q5_K_S", _F.MOSTLY_Q5_K_S, _Q.Q5_K, "5.5 bits/weight"),
        FileType("Q4_K_M", _F.MOSTLY_Q4_K_M, _Q.Q4_K, "4.5 bits/weight, attn_v/ffn_down upgraded (the usual pick)"),
        FileType("Q4_K_S", _F.MOSTLY_Q4_K_S, _Q.Q4_K, "4.5 bits/weight"),
        FileType("Q4_0", _F.MOSTLY_Q4_0, _Q.Q4_0, "4.5 bits/weight, legacy 32-blocks"),
        FileType("Q3_K_M", _F.MOSTLY_Q3_K_M, _Q.Q3_K, "3.4 bits/weight"),
        FileType("Q2_K", _F.MOSTLY_Q2_K, _Q.Q2_K, "2.6 bits/weight, big quality loss"),
    )
}


def parse_file_type(name: str) -> FileType:
    """Case-insensitive llama.cpp name ("q4_k_m", "Q8_0", "f16") -> FileType; EdgeftError listing the menu."""
    key = str(name).strip().upper()
    if key not in FILE_TYPES:
        raise EdgeftError(f"unknown quant type {name!r}; choose one of: {', '.join(FILE_TYPES)}")
    return FILE_TYPES[key]


def plan_tensor_types(
    file_type: FileType | str,
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    *,
    arch: str,
    n_layer: int,
    n_gqa: int = 1,
    has_imatrix: bool = False,
    source_types: Mapping[str, GGMLQuantizationType] | None = None,
) -> dict[str, GGMLQuantizationType]:
    """GGUF tensor name -> ggml type, as llama-quantize would choose for this file type.

    `tensors`: (GGUF name, shape in numpy order). `n_gqa` = n_head // n_head_kv (Q2_K's attn_v rule needs it);
    `has_imatrix` matters for Q4_0 (first ffn_down layers become Q4_1); `source_types`, for GGUF->GGUF, keeps
    tensors that are never quantized (norms, biases) in their current type.
    """
    if isinstance(file_type, str):
        file_type = parse_file_type(file_type)
    if arch.lower() == "falcon":  # llama.cpp has Falcon-only rules we do not carry
        raise EdgeftError("falcon: quantization policy not implemented for this architecture; use llama-quantize")
    names, _ = policy.choose_types(
        file_type.name,
        file_type.default_type.name,
        [(name, tuple(int(d) for d in shape)) for name, shape in tensors],
        arch=arch.lower(),
        n_layer=n_layer,
        n_gqa=n_gqa,
        has_imatrix=has_imatrix,
        source_types={k: GGMLQuantizationType(v).name for k, v in (source_types or {}).items()},
    )
    return {name: GGMLQuantizationType[type_name] for name, type_name in names.items()}


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 stored as uint16 (how safetensors gives it without torch) -> float32, exactly."""
    from convert.reader import bf16_to_float32

    return bf16_to_float32(np.asarray(bits, dtype=np.uint16))


def quantize_tensor(
    data: np.ndarray,
    qtype: GGMLQuantizationType,
    *,
    imatrix: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Convert one tensor to `qtype`, byte-identical to ggml_quantize_chunk on the same float32 values.

    Returns what GGUFWriter.add_tensor(name, arr, raw_dtype=qtype) expects: float32 (same shape) for F32, float16
    (same shape) for F16, uint8 (..., bytes_per_row) for BF16 and quantized types. `imatrix` (n_per_row,) weights
    the rounding error per input column for the types that use one (K-quants, Q4_0); ignored by F16/BF16/Q8_0.
    """
    qtype = GGMLQuantizationType(qtype)
    data = np.asarray(data)
    if data.dtype not in (np.float32, np.float16, np.float64):
        raise TypeError(f"quantize_tensor wants float data, got {data.dtype} (bf16 bits: use bf16_bits_to_f32)")
    if qtype == GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if data.ndim == 0:
        raise ValueError("quantize_tensor: scalar tensors cannot be quantized")
    shape = data.shape
    n_per_row = shape[-1]
    block_size, _ = GGML_QUANT_SIZES[qtype]
    if n_per_row % block_size:
        raise ValueError(f"{qtype.name}: row length {n_per_row} is not a multiple of {block_size} (policy should have fallen back)")
    rows = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, n_per_row)
    uses_imatrix = imatrix is not None and qtype not in (_Q.F16, _Q.BF16, _Q.Q8_0)

    if qtype == _Q.F16:
        return numpy_kernels.to_f16(rows).reshape(shape)
    if qtype == _Q.BF16:
        return numpy_kernels.to_bf16_bytes(rows).reshape(*shape[:-1], n_per_row * 2)
    if kernels.available():
        if uses_imatrix and np.asarray(imatrix).size != n_per_row:
            raise ValueError(f"imatrix has {np.asarray(imatrix).size} values, tensor rows have {n_per_row}")
        out = kernels.ggml_quantize(
            rows, qtype, imatrix=np.asarray(imatrix).reshape(-1) if uses_imatrix else None, threads=threads
        )
    elif qtype.name in numpy_kernels.NUMPY_QUANTIZERS and not uses_imatrix:
        out = numpy_kernels.NUMPY_QUANTIZERS[qtype.name](rows)
    else:
        raise EdgeftError(
            f"{qtype.name}{' with an imatrix' if uses_imatrix else ''}: needs ggml's kernel (libggml-base from "
            "llama-cpp-python); `pip install llama-cpp-python` or choose F16/BF16/Q8_0/Q4_0 without --imatrix"
        )
    return out.reshape(*shape[:-1], out.shape[-1])


def kernel_backend() -> str:
    """'ggml' when ggml's own kernels are loaded, else 'numpy'."""
    return "ggml" if kernels.available() else "numpy"


def load_imatrix(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """llama.cpp imatrix GGUF -> {GGUF tensor name: float32 (n_per_row,) importance}, as llama-quantize uses it:
    in_sum2 / counts per row group (experts), and 1.0 where a count is zero."""
    from convert.quant.imatrix_file import read_imatrix

    return read_imatrix(path).importance()


__all__ = [
    "FILE_TYPES",
    "FileType",
    "bf16_bits_to_f32",
    "default_threads",
    "kernel_backend",
    "load_imatrix",
    "parse_file_type",
    "plan_tensor_types",
    "quantize_tensor",
]
