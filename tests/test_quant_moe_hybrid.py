"""llama.cpp's own quantizer (`llama_model_quantize` in libllama) against ours on the MoE and hybrid fixtures: stacked
3-D expert tensors, an unquantized router, Mixtral's 8 experts (llama.cpp's n_expert == 8 rules), MXFP4 experts,
and LFM2's per-layer KV-head counts and never-quantized conv kernels. Same types and bytes, file for file.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader

from convert import convert_model
from convert.quant import FILE_TYPES
from convert.quant.gguf_io import quantize_gguf
from tests.factory import build_model
from tests.test_quant_reference import assert_same_tensors, libllama, llama_quantize  # noqa: F401  (fixture)

pytest.importorskip("llama_cpp", reason="llama-cpp-python not installed")

# Mixtral (8 experts): every file type an n_expert == 8 rule touches (attn_v / attn_k / attn_output / ffn_down in
# Q2_K, Q3_K_*, Q4_K_*, IQ3_M, IQ4_*), MXFP4_MOE's expert type, the legacy and float types. The others: the common
# menu and the types with a rule of their own. i-quants that need an imatrix are left out: a MoE imatrix holds one
# vector per expert, which edgeft does not produce.
EIGHT_EXPERT_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S", "Q4_0", "Q5_0",
                      "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q2_K", "IQ4_XS", "IQ4_NL", "IQ3_S", "IQ3_M", "MXFP4_MOE")
COMMON_TYPES = ("F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K", "IQ4_XS", "MXFP4_MOE")
MODELS = {"qwen3moe-aligned": ("qwen3moe", {"aligned": True}, COMMON_TYPES),
          "mixtral-aligned": ("mixtral", {"aligned": True}, EIGHT_EXPERT_TYPES),
          "mixtral-odd": ("mixtral", {}, ("Q8_0", "Q4_K_M", "Q3_K_M")),  # rows not a multiple of 256: fallbacks
          "lfm2-aligned": ("lfm2", {"aligned": True}, COMMON_TYPES[:-1])}


@pytest.fixture(scope="module")
def f32_models(tmp_path_factory):
    work = tmp_path_factory.mktemp("quant-moe")
    return {key: convert_model(build_model(arch, **kw), work / f"{key}.gguf", outtype="f32")
            for key, (arch, kw, _) in MODELS.items()}


@pytest.mark.parametrize("model", MODELS)
def test_same_types_and_bytes_as_llama_quantize(libllama, f32_models, tmp_path, model):  # noqa: F811
    for name in MODELS[model][2]:
        file_type = FILE_TYPES[name]
        ours = quantize_gguf(f32_models[model], tmp_path / f"ours-{name}.gguf", file_type, threads=2)
        theirs = llama_quantize(libllama, f32_models[model], tmp_path / f"ref-{name}.gguf", int(file_type.gguf_file_type))
        assert_same_tensors(ours, theirs)


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
@pytest.mark.parametrize("model", ["qwen3moe-aligned", "mixtral-aligned", "lfm2-aligned"])
def test_convert_straight_to_a_quant_equals_llama_quantize(libllama, f32_models, tmp_path, model, outtype):  # noqa: F811
    """The one-pass HF -> Q8_0 / Q4_K_M conversion writes the tensors llama-quantize makes of the F32 GGUF (the
    header differs: it keeps the F32 file's metadata order)."""
    arch, kw, _ = MODELS[model]
    ours = convert_model(build_model(arch, **kw), tmp_path / "ours.gguf", outtype=outtype)
    file_type = FILE_TYPES[outtype.upper()]
    theirs = llama_quantize(libllama, f32_models[model], tmp_path / "ref.gguf", int(file_type.gguf_file_type))
    mine, ref = ({t.name: t for t in GGUFReader(path).tensors} for path in (ours, theirs))
    assert set(mine) == set(ref)
    for name, tensor in ref.items():
        assert mine[name].tensor_type == tensor.tensor_type, name
        assert np.array_equal(np.asarray(mine[name].data).view(np.uint8), np.asarray(tensor.data).view(np.uint8)), name


@pytest.mark.parametrize("ftype", ["Q4_K_M", "IQ4_XS"])
def test_same_bytes_with_an_attention_imatrix(libllama, f32_models, tmp_path, ftype):  # noqa: F811
    """What `edgeft imatrix` gives a MoE: importances for the 2-D block weights (attention; the router is never
    quantized), none for the stacked experts, which both quantizers then quantize unweighted."""
    from convert.quant import load_imatrix
    from tests.test_quant_reference import synthetic_imatrix

    source = f32_models["mixtral-aligned"]
    path = synthetic_imatrix(source, tmp_path / "im.gguf")
    file_type = FILE_TYPES[ftype]
    ours = quantize_gguf(source, tmp_path / "ours.gguf", file_type, imatrix=path, threads=2)
    theirs = llama_quantize(libllama, source, tmp_path / "ref.gguf", int(file_type.gguf_file_type), load_imatrix(path))
    assert_same_tensors(ours, theirs)
