"""Quantization: llama.cpp's file types, its per-tensor type policy, and its kernels.

    ft = parse_file_type("q4_k_m")
    types = plan_tensor_types(ft, [(name, shape), ...], arch="llama", n_layer=32, n_gqa=4)
    raw = quantize_tensor(array, types[name])          # feed to GGUFWriter.add_tensor(name, raw, raw_dtype=...)

Kernels: ggml's own `ggml_quantize_chunk` (through ctypes, kernels.py) when llama-cpp-python is installed, so the
bytes are llama-quantize's; gguf-py's numpy quantizers (numpy_kernels.py) for F16/BF16/Q8_0/Q4_0 otherwise,
bit-identical.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from convert.quant import kernels, numpy_kernels, policy
from convert.quant.kernels import default_threads
from convert.common.errors import EdgeftError


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


# The menu, largest first: llama-quantize's file types (tools/quantize/quantize.cpp). Base types from llama.cpp's
# llama_ftype_get_default_type (note IQ2_S's base is IQ2_XS, IQ2_M's IQ2_S, IQ3_XS's and IQ3_M's IQ3_S); the
# _S/_M/_L variants differ only in the per-tensor rules of policy.py. Bits/weight are the base type's.
_Q = GGMLQuantizationType
_F = LlamaFileType
FILE_TYPES: dict[str, FileType] = {
    ft.name: ft
    for ft in (
        FileType("F32", _F.ALL_F32, _Q.F32, "32-bit float, no loss"),
        FileType("F16", _F.MOSTLY_F16, _Q.F16, "16-bit float"),
        FileType("BF16", _F.MOSTLY_BF16, _Q.BF16, "bfloat16, the usual training dtype"),
        FileType("Q8_0", _F.MOSTLY_Q8_0, _Q.Q8_0, "8.5 bits/weight, near-lossless"),
        FileType("MXFP4_MOE", _F.MOSTLY_MXFP4_MOE, _Q.MXFP4,
                 "MXFP4 for MoE expert tensors, Q8_0 for the rest (a dense model: all Q8_0)"),
        FileType("Q6_K", _F.MOSTLY_Q6_K, _Q.Q6_K, "6.6 bits/weight"),
        FileType("Q5_1", _F.MOSTLY_Q5_1, _Q.Q5_1, "6.0 bits/weight, legacy 32-blocks"),
        FileType("Q5_K_M", _F.MOSTLY_Q5_K_M, _Q.Q5_K, "5.5 bits/weight, attn_v/ffn_down upgraded"),
        FileType("Q5_K_S", _F.MOSTLY_Q5_K_S, _Q.Q5_K, "5.5 bits/weight"),
        FileType("Q5_0", _F.MOSTLY_Q5_0, _Q.Q5_0, "5.5 bits/weight, legacy 32-blocks"),
        FileType("Q4_1", _F.MOSTLY_Q4_1, _Q.Q4_1, "5.0 bits/weight, legacy 32-blocks"),
        FileType("Q4_K_M", _F.MOSTLY_Q4_K_M, _Q.Q4_K, "4.5 bits/weight, attn_v/ffn_down upgraded (the usual pick)"),
        FileType("Q4_K_S", _F.MOSTLY_Q4_K_S, _Q.Q4_K, "4.5 bits/weight"),
        FileType("Q4_0", _F.MOSTLY_Q4_0, _Q.Q4_0, "4.5 bits/weight, legacy 32-blocks"),
        FileType("IQ4_NL", _F.MOSTLY_IQ4_NL, _Q.IQ4_NL, "4.5 bits/weight, non-linear 32-blocks"),
        FileType("IQ4_XS", _F.MOSTLY_IQ4_XS, _Q.IQ4_XS, "4.25 bits/weight, non-linear"),
        FileType("Q3_K_L", _F.MOSTLY_Q3_K_L, _Q.Q3_K, "3.4 bits/weight, attn_v/ffn_down/attn_output Q5_K"),
        FileType("Q3_K_M", _F.MOSTLY_Q3_K_M, _Q.Q3_K, "3.4 bits/weight"),
        FileType("Q3_K_S", _F.MOSTLY_Q3_K_S, _Q.Q3_K, "3.4 bits/weight, no upgrades"),
        FileType("IQ3_M", _F.MOSTLY_IQ3_M, _Q.IQ3_S, "3.4 bits/weight i-quant mix, attn_v/attn_output Q4_K"),
        FileType("IQ3_S", _F.MOSTLY_IQ3_S, _Q.IQ3_S, "3.4 bits/weight i-quant"),
        FileType("IQ3_XS", _F.MOSTLY_IQ3_XS, _Q.IQ3_S, "3.3 bits/weight i-quant mix (needs an imatrix)"),
        FileType("IQ3_XXS", _F.MOSTLY_IQ3_XXS, _Q.IQ3_XXS, "3.06 bits/weight i-quant (needs an imatrix)"),
        FileType("Q2_K", _F.MOSTLY_Q2_K, _Q.Q2_K, "2.6 bits/weight, big quality loss"),
        FileType("Q2_K_S", _F.MOSTLY_Q2_K_S, _Q.Q2_K, "2.6 bits/weight, fewer upgrades (needs an imatrix)"),
        FileType("IQ2_M", _F.MOSTLY_IQ2_M, _Q.IQ2_S, "2.7 bits/weight i-quant mix (needs an imatrix)"),
        FileType("IQ2_S", _F.MOSTLY_IQ2_S, _Q.IQ2_XS, "2.5 bits/weight i-quant mix (needs an imatrix)"),
        FileType("IQ2_XS", _F.MOSTLY_IQ2_XS, _Q.IQ2_XS, "2.31 bits/weight i-quant (needs an imatrix)"),
        FileType("IQ2_XXS", _F.MOSTLY_IQ2_XXS, _Q.IQ2_XXS, "2.06 bits/weight i-quant (needs an imatrix)"),
        FileType("TQ2_0", _F.MOSTLY_TQ2_0, _Q.TQ2_0, "2.06 bits/weight ternary, for ternary-trained models"),
        FileType("IQ1_M", _F.MOSTLY_IQ1_M, _Q.IQ1_M, "1.75 bits/weight i-quant (needs an imatrix)"),
        FileType("TQ1_0", _F.MOSTLY_TQ1_0, _Q.TQ1_0, "1.69 bits/weight ternary, for ternary-trained models"),
        FileType("IQ1_S", _F.MOSTLY_IQ1_S, _Q.IQ1_S, "1.56 bits/weight i-quant (needs an imatrix)"),
    )
}
# llama-quantize's short names for the _M mixes.
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}


def parse_file_type(name: str) -> FileType:
    """Case-insensitive llama.cpp name ("q4_k_m", "Q8_0", "iq4_xs") -> FileType; EdgeftError listing the menu."""
    key = str(name).strip().upper()
    key = ALIASES.get(key, key)
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
    n_expert: int = 0,
    source_types: Mapping[str, GGMLQuantizationType] | None = None,
) -> dict[str, GGMLQuantizationType]:
    """GGUF tensor name -> ggml type, as llama-quantize would choose for this file type.

    `tensors`: (GGUF name, shape in numpy order). `n_gqa` = n_head // n_head_kv (the attn_v rules of Q2_K and the
    i-quants need it); `has_imatrix` matters for Q4_0/Q5_0, IQ4_NL/IQ4_XS and IQ3_XXS (llama.cpp picks other types
    for some tensors when it has one); `n_expert` (0 for dense models) matters for MoE models with exactly 8
    experts and for MXFP4_MOE; `source_types`, for GGUF->GGUF, keeps
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
        n_expert=n_expert,
        source_types={k: GGMLQuantizationType(v).name for k, v in (source_types or {}).items()},
    )
    return {name: GGMLQuantizationType[type_name] for name, type_name in names.items()}


def validate_imatrix(
    file_type: FileType,
    plan: Mapping[str, GGMLQuantizationType],
    widths: Mapping[str, int],
    importance: Mapping[str, np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """Refuse, in one line and before anything is written, what llama-quantize refuses — a tensor type that needs an
    importance matrix, without one — and an imatrix made for another model (names or row widths this model does
    not have). Returns the entries to quantize with: llama.cpp ignores a token_embd entry of the wrong width.

    `plan`: tensor name -> chosen type (plan_tensor_types); `widths`: tensor name -> row length (ggml's ne[0]).
    """
    importance = dict(importance or {})
    needing = [(name, qtype) for name, qtype in plan.items()
               if policy.requires_imatrix(file_type.name, name, GGMLQuantizationType(qtype).name)]
    if needing and not importance:
        name, qtype = needing[0]
        raise EdgeftError(
            f"{file_type.name}: llama.cpp refuses this type without an importance matrix ({name} would be "
            f"{GGMLQuantizationType(qtype).name}); add --imatrix auto (computed from the fine-tune's own training "
            "data) or --imatrix FILE (from `edgeft imatrix` or llama-imatrix)")
    unknown = sorted(set(importance) - set(widths))
    if unknown:
        raise EdgeftError(f"imatrix entry {unknown[0]} is not a tensor of this model ({len(unknown)} such entries): "
                          "the imatrix was computed for another model; recompute it for this one (--imatrix auto)")
    usable = {}
    for name, values in importance.items():
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.size != widths[name]:
            if name == "token_embd.weight":  # llama.cpp: "tok_embd should be ignored in this case"
                continue
            raise EdgeftError(f"{name}: imatrix has {values.size} values per row, tensor rows have {widths[name]}; "
                              "the imatrix was computed for another model")
        if not np.isfinite(values).all():
            raise EdgeftError(f"{name}: imatrix holds NaN or Inf values; recompute it (--imatrix auto)")
        usable[name] = values
    missing = [(name, qtype) for name, qtype in needing if name not in usable]
    if missing:
        name, qtype = missing[0]
        raise EdgeftError(f"{name}: the imatrix has no entry for it, and {file_type.name} needs one to make it "
                          f"{GGMLQuantizationType(qtype).name}; recompute the imatrix for this model (--imatrix auto)")
    return usable


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bf16 stored as uint16 (how safetensors gives it without torch) -> float32, exactly."""
    from convert.safetensors_file import bf16_to_float32

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

    if qtype in (_Q.F16, _Q.BF16):
        out = numpy_kernels.NUMPY_QUANTIZERS[qtype.name](rows)
        return out.reshape(shape) if qtype == _Q.F16 else out.reshape(*shape[:-1], n_per_row * 2)
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
    "ALIASES",
    "FILE_TYPES",
    "FileType",
    "bf16_bits_to_f32",
    "default_threads",
    "kernel_backend",
    "load_imatrix",
    "parse_file_type",
    "plan_tensor_types",
    "quantize_tensor",
    "validate_imatrix",
]
