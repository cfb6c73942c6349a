"""The dense architectures with their own quirks against llama.cpp's own quantizer (see test_quant_reference): Q8_0 and Q4_K_M of the
F32 fixture GGUF, ours vs `llama_model_quantize`, the same tensor types and the same bytes — at K-quant width
(hidden 256) and at an odd width (hidden 64, where the K-quants fall back per tensor)."""

from __future__ import annotations

import pytest

from convert import convert_model
from convert.quant import FILE_TYPES
from convert.quant.gguf_io import quantize_gguf
from tests.factory import build_model
from tests.test_quant_reference import assert_same_tensors, libllama, llama_quantize  # noqa: F401  (fixture)

ARCHS = ("smollm3", "granite", "olmo2", "gemma3", "phi4mini")


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "odd"])
@pytest.mark.parametrize("arch", ARCHS)
def test_same_types_and_bytes_as_llama_quantize(libllama, arch, aligned, tmp_path):  # noqa: F811
    source = convert_model(build_model(arch, aligned=aligned), tmp_path / "f32.gguf", outtype="f32")
    for name in ("Q8_0", "Q4_K_M"):
        file_type = FILE_TYPES[name]
        ours = quantize_gguf(source, tmp_path / f"ours-{name}.gguf", file_type, threads=2)
        theirs = llama_quantize(libllama, source, tmp_path / f"ref-{name}.gguf", int(file_type.gguf_file_type))
        assert_same_tensors(ours, theirs)
        print(f"{arch}-{'aligned' if aligned else 'odd'} {name}: byte-identical to llama_model_quantize")
