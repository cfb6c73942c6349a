"""The pure-numpy quantizers: gguf-py's (gguf.quants) for F16, BF16, Q8_0 and Q4_0, whose bytes are ggml's.

Used when llama-cpp-python's `libggml-base` is not available (and always for F16/BF16, where numpy is as fast as
ggml). gguf.quants follows ggml's reference kernels (ggml-quants.c `quantize_row_q8_0_ref` /
`quantize_row_q4_0_ref`, ggml-impl.h `ggml_compute_fp32_to_bf16`) operation for operation in float32;
tests/test_quant_kernels.py checks its bytes against ggml itself.
Q4_0 only without an imatrix: ggml's Q4_0 with one searches its scales (quantize_row_q4_0_impl), gguf.quants has
no such path; the caller checks. Everything else needs ggml's kernel: gguf.quants can only dequantize the K-quants
and most i-quants, and the quantize-without-ggml menu stays these four (the error in quantize_tensor names them).
"""

from __future__ import annotations

from functools import partial

from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

# GGMLQuantizationType name -> numpy quantizer, float32 rows (..., n_per_row) in, what GGUFWriter.add_tensor(...,
# raw_dtype=qtype) expects out (float16 for F16, uint8 (..., bytes_per_row) for the others).
NUMPY_QUANTIZERS = {
    name: partial(gguf_quants.quantize, qtype=GGMLQuantizationType[name]) for name in ("F16", "BF16", "Q8_0", "Q4_0")
}
