"""Bytes: quantize_tensor == ggml's own ggml_quantize_chunk (one direct call, no threads) for every type; the numpy
path == ggml byte for byte for F16/BF16/Q8_0/Q4_0; and an imatrix really reaches the kernel."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants

from convert.quant import FILE_TYPES, bf16_bits_to_f32, kernels, numpy_kernels, quantize_tensor
from convert.common.errors import EdgeftError

# Every tensor type our menu can produce, fallbacks included.
IQ_TYPES = [T.IQ4_NL, T.IQ4_XS, T.IQ3_S, T.IQ3_XXS, T.IQ2_S, T.IQ2_XS, T.IQ2_XXS, T.IQ1_M, T.IQ1_S]
ALL_TYPES = [T.F16, T.BF16, T.Q8_0, T.Q6_K, T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1,
             *IQ_TYPES, T.TQ2_0, T.TQ1_0, T.MXFP4]
# ggml asserts an importance matrix for these (ggml_quantize_requires_imatrix)
KERNEL_NEEDS_IMATRIX = (T.IQ2_XXS, T.IQ2_XS, T.IQ1_S)
NUMPY_TYPES = [T.F16, T.BF16, T.Q8_0, T.Q4_0]

needs_ggml = pytest.mark.skipif(not kernels.available(), reason="libggml-base (llama-cpp-python) not installed")


def tricky_rows(n_rows=48, n_per_row=512, seed=0) -> np.ndarray:
    """Weights at many scales plus the cases that break naive ports: all-zero blocks, exact .5 ties after
    scaling, repeated maxima of both signs, subnormals, huge values, bf16 rounding ties."""
    rng = np.random.default_rng(seed)
    rows = (rng.standard_normal((max(n_rows, 8), n_per_row)) * rng.uniform(1e-4, 8, (max(n_rows, 8), 1))).astype(np.float32)
    rows[0, :64] = 0.0
    rows[1, :32] = np.linspace(-127, 127, 32, dtype=np.float32) / 127 * 3.5  # scaled values land on .5
    rows[2, :32] = 1.0
    rows[2, 5] = -1.0  # |max| tie: ggml keeps the first
    rows[3, :32] = np.float32(1e-30)  # tiny (1/scale still finite: ggml's behaviour past that is undefined C)
    rows[3, 32:64] = np.float32(1e-40)  # subnormals beside normal values
    rows[3, 63] = 1e-3
    rows[4, :32] = np.float32(6.0e4)
    # values on the bf16 grid nudged by half an ulp for some mantissas: round-to-nearest-even ties
    grid = bf16_bits_to_f32((rows[5].view(np.uint32) >> 16).astype(np.uint16))
    rows[5] = grid * np.float32(1 + 2**-8)
    rows[6, :32] = np.arange(-16, 16, dtype=np.float32) / 2
    return rows[:n_rows]


def ggml_direct(rows: np.ndarray, qtype: T, imatrix: np.ndarray | None = None) -> np.ndarray:
    """One plain call of ggml_quantize_chunk over all rows: the reference."""
    lib = kernels.load_library()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.zeros((rows.shape[0], rows.shape[1] // block * size), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = lib.ggml_quantize_chunk(
        int(qtype), rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1],
        None if im is None else im.ctypes.data_as(ctypes.c_void_p).value,
    )
    assert written == out.nbytes
    return out


def as_bytes(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).view(np.uint8).reshape(array.shape[0], -1)


@needs_ggml
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("threads", [1, 2])
def test_quantize_tensor_equals_ggml(qtype, threads):
    # threads split the rows: the bytes must not depend on it (ggml quantizes rows independently, i-quants too)
    rows = tricky_rows()
    importance = np.random.default_rng(2).uniform(0.5, 4, rows.shape[1]).astype(np.float32)
    importance = importance if qtype in KERNEL_NEEDS_IMATRIX else None
    ours = quantize_tensor(rows, qtype, imatrix=importance, threads=threads)
    assert np.array_equal(as_bytes(ours), ggml_direct(rows, qtype, importance))


@needs_ggml
@pytest.mark.parametrize("qtype", [T.Q6_K, T.Q5_K, T.Q4_K, T.Q3_K, T.Q2_K, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, *IQ_TYPES],
                         ids=lambda t: t.name)
def test_imatrix_reaches_the_kernel(qtype):
    rows = tricky_rows(seed=1)
    importance = np.random.default_rng(2).uniform(0.01, 50, rows.shape[1]).astype(np.float32)
    ours = quantize_tensor(rows, qtype, imatrix=importance, threads=2)
    assert np.array_equal(as_bytes(ours), ggml_direct(rows, qtype, importance))
    other = None if qtype not in KERNEL_NEEDS_IMATRIX else np.ones(rows.shape[1], np.float32)
    assert not np.array_equal(as_bytes(ours), ggml_direct(rows, qtype, other))  # and it changes the result


@needs_ggml
@pytest.mark.parametrize("qtype", NUMPY_TYPES, ids=lambda t: t.name)
def test_numpy_path_equals_ggml(qtype):
    for seed in range(3):
        rows = tricky_rows(seed=seed)
        ours = numpy_kernels.NUMPY_QUANTIZERS[qtype.name](rows)
        assert np.array_equal(as_bytes(ours), ggml_direct(rows, qtype)), seed


def test_roundf_halves_go_away_from_zero():
    # The numpy Q8_0 path is gguf-py's, whose bytes equal ggml's only while its roundf is C's (halves away from
    # zero; 0.49999997 + 0.5 must not round up in float32).
    values = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, 126.5], dtype=np.float32)
    assert gguf_quants.np_roundf(values).tolist() == [1, 2, 3, -1, -3, 0, 127]


def test_output_shapes_fit_gguf_writer():
    rows = tricky_rows(n_rows=4, n_per_row=256)
    assert quantize_tensor(rows, T.F32).dtype == np.float32
    assert quantize_tensor(rows, T.F16).shape == (4, 256) and quantize_tensor(rows, T.F16).dtype == np.float16
    assert quantize_tensor(rows, T.BF16).shape == (4, 512)
    assert quantize_tensor(rows, T.Q8_0).shape == (4, 8 * 34)
    cube = np.stack([rows, rows])
    assert quantize_tensor(cube, T.Q8_0).shape == (2, 4, 8 * 34)


def test_row_length_must_fit_the_block():
    with pytest.raises(ValueError, match="multiple"):
        quantize_tensor(np.zeros((2, 48), np.float32), T.Q8_0)


def test_without_ggml_k_quants_say_what_to_install(monkeypatch):
    monkeypatch.setattr(kernels, "available", lambda: False)
    rows = tricky_rows(n_rows=4, n_per_row=256)
    with pytest.raises(EdgeftError, match="llama-cpp-python"):
        quantize_tensor(rows, T.Q4_K)
    with pytest.raises(EdgeftError, match="imatrix"):
        quantize_tensor(rows, T.Q4_0, imatrix=np.ones(256, np.float32))
    # the numpy path still serves its types
    assert np.array_equal(quantize_tensor(rows, T.Q8_0), gguf_quants.quantize(rows, T.Q8_0))


def test_every_menu_type_has_a_kernel_route():
    for ft in FILE_TYPES.values():
        assert ft.default_type in ALL_TYPES or ft.default_type == T.F32
