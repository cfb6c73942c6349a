"""GGUF -> GGUF quantization on real fixture models: the tensor types per file type equal llama.cpp's rules
(expected tables written by hand for the 2-layer fixtures), every tensor's bytes equal ggml's kernel on the same
float32 values, one-pass HF -> Qx equals F32 GGUF -> Qx, metadata survives, and interrupted runs leave nothing."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from convert import convert_model
from convert.quant import kernels, numpy_kernels
from convert.quant.gguf_io import quantize_gguf
from edgeft.cli import main
from convert.common.errors import EdgeftError
from tests.convert_helpers import assert_same_tensor_data
from tests.factory import build_model

needs_ggml = pytest.mark.skipif(not kernels.available(), reason="libggml-base (llama-cpp-python) not installed")

# Expected per-tensor types for the 2-layer fixtures (n_gqa = 2, untied output). With 2 layers llama.cpp's
# use_more_bits picks layer 1 only; n_layer/8 = n_layer/16 = 0. Tuple: (base, attn_v[0..1], ffn_down[0..1],
# attn_output, output).
ALIGNED = {  # hidden 256, intermediate 512: every K-quant fits
    "Q8_0": ("Q8_0", ["Q8_0", "Q8_0"], ["Q8_0", "Q8_0"], "Q8_0", "Q8_0"),
    "Q6_K": ("Q6_K", ["Q6_K", "Q6_K"], ["Q6_K", "Q6_K"], "Q6_K", "Q6_K"),
    "Q5_K_M": ("Q5_K", ["Q5_K", "Q6_K"], ["Q5_K", "Q6_K"], "Q5_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", ["Q5_K", "Q5_K"], ["Q5_K", "Q5_K"], "Q5_K", "Q6_K"),
    "Q4_K_M": ("Q4_K", ["Q4_K", "Q6_K"], ["Q4_K", "Q6_K"], "Q4_K", "Q6_K"),
    "Q4_K_S": ("Q4_K", ["Q5_K", "Q5_K"], ["Q4_K", "Q4_K"], "Q4_K", "Q6_K"),
    "Q4_0": ("Q4_0", ["Q4_0", "Q4_0"], ["Q4_0", "Q4_0"], "Q4_0", "Q6_K"),
    "Q3_K_M": ("Q3_K", ["Q5_K", "Q5_K"], ["Q4_K", "Q4_K"], "Q4_K", "Q6_K"),
    "Q2_K": ("Q2_K", ["Q3_K", "Q3_K"], ["Q3_K", "Q3_K"], "Q3_K", "Q6_K"),  # n_gqa 2 < 4: attn_v Q3_K
}
ODD = {  # hidden 64, intermediate 160: K-quants fall back to 32-block types, output to Q8_0
    "Q8_0": ("Q8_0", ["Q8_0", "Q8_0"], ["Q8_0", "Q8_0"], "Q8_0", "Q8_0"),
    "Q6_K": ("Q8_0", ["Q8_0", "Q8_0"], ["Q8_0", "Q8_0"], "Q8_0", "Q8_0"),
    "Q5_K_M": ("Q5_1", ["Q5_1", "Q8_0"], ["Q5_1", "Q8_0"], "Q5_1", "Q8_0"),
    "Q5_K_S": ("Q5_1", ["Q5_1", "Q5_1"], ["Q5_1", "Q5_1"], "Q5_1", "Q8_0"),
    "Q4_K_M": ("Q5_0", ["Q5_0", "Q8_0"], ["Q5_0", "Q8_0"], "Q5_0", "Q8_0"),
    "Q4_K_S": ("Q5_0", ["Q5_1", "Q5_1"], ["Q5_0", "Q5_0"], "Q5_0", "Q8_0"),
    "Q4_0": ("Q4_0", ["Q4_0", "Q4_0"], ["Q4_0", "Q4_0"], "Q4_0", "Q8_0"),
    "Q3_K_M": ("Q4_0", ["Q5_1", "Q5_1"], ["Q5_0", "Q5_0"], "Q5_0", "Q8_0"),
    "Q2_K": ("Q4_0", ["Q4_0", "Q4_0"], ["Q4_0", "Q4_0"], "Q4_0", "Q8_0"),
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# The types written out above (the whole menu against llama.cpp itself: test_quant_reference.py). Without ggml only
# the numpy types can be produced (Q4_0 files need Q6_K for the output tensor).
RUNNABLE = [*FLOAT_TYPES, *ALIGNED] if kernels.available() else ["F32", "F16", "BF16", "Q8_0"]


@pytest.fixture(scope="module")
def f32_gguf(tmp_path_factory):
    """llama fixtures (aligned and odd widths) converted to F32 GGUF once."""
    out = tmp_path_factory.mktemp("quant-gguf")
    return {
        kind: (convert_model(build_model("llama", aligned=kind == "aligned"), out / f"{kind}-f32.gguf", outtype="f32"))
        for kind in ("aligned", "odd")
    }


def tensor_types(path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def source_rows(tensor) -> np.ndarray:
    return np.asarray(tensor.data, dtype=np.float32).reshape(-1, int(tensor.shape[0]))


@pytest.mark.parametrize("kind", ["aligned", "odd"])
@pytest.mark.parametrize("ftype", RUNNABLE)
def test_types_and_bytes_match_llama_cpp(f32_gguf, tmp_path, kind, ftype):
    out = quantize_gguf(f32_gguf[kind], tmp_path / "q.gguf", ftype, threads=2)
    types = tensor_types(out)
    source = {t.name: t for t in GGUFReader(f32_gguf[kind]).tensors}
    assert set(types) == set(source)
    if ftype in FLOAT_TYPES:
        expected = {name: (ftype if len(t.shape) > 1 and not name.endswith("norm.weight") else "F32")
                    for name, t in source.items()}
        assert types == expected
    else:
        base, attn_v, ffn_down, attn_output, output = (ALIGNED if kind == "aligned" else ODD)[ftype]
        assert [types[f"blk.{i}.attn_v.weight"] for i in range(2)] == attn_v
        assert [types[f"blk.{i}.ffn_down.weight"] for i in range(2)] == ffn_down
        assert {types[f"blk.{i}.attn_output.weight"] for i in range(2)} == {attn_output}
        assert types["output.weight"] == output
        for i in range(2):
            for part in ("attn_q", "attn_k", "ffn_gate", "ffn_up"):
                assert types[f"blk.{i}.{part}.weight"] == base
        assert types["token_embd.weight"] == base
        assert all(types[n] == "F32" for n in types if n.endswith("norm.weight"))
    # bytes: each tensor equals ggml's kernel (or the bit-identical numpy path) on the same float32 rows
    for tensor in GGUFReader(out).tensors:
        rows = source_rows(source[tensor.name])
        qtype = tensor.tensor_type
        if qtype == T.F32:
            expected_bytes = rows.view(np.uint8)
        elif kernels.available() and qtype not in (T.F16, T.BF16):
            expected_bytes = kernels.ggml_quantize(rows, qtype, threads=1)
        else:
            expected_bytes = np.ascontiguousarray(numpy_kernels.NUMPY_QUANTIZERS[qtype.name](rows)).view(np.uint8)
        assert np.array_equal(np.asarray(tensor.data).view(np.uint8).reshape(-1), expected_bytes.reshape(-1)), tensor.name


def test_metadata_is_copied_and_stamped(f32_gguf, tmp_path):
    out = quantize_gguf(f32_gguf["odd"], tmp_path / "q8.gguf", "Q8_0")
    before, after = GGUFReader(f32_gguf["odd"]).fields, GGUFReader(out).fields
    assert after["general.file_type"].contents() == 7
    assert after["general.quantization_version"].contents() == 2
    for key, field in before.items():
        if key.startswith("GGUF.") or key in ("general.file_type", "general.quantization_version"):
            continue
        assert after[key].contents() == field.contents(), key


def test_one_pass_equals_two_steps(f32_gguf, tmp_path):
    # HF -> Qx in one pass must give the same tensors as HF -> F32 GGUF -> Qx (fixture weights are float32)
    ftype = "Q4_K_M" if kernels.available() else "Q8_0"
    one = convert_model(build_model("llama", aligned=True), tmp_path / "one.gguf", outtype=ftype)
    two = quantize_gguf(f32_gguf["aligned"], tmp_path / "two.gguf", ftype)
    assert_same_tensor_data(one, two)


def test_interrupted_quantization_leaves_no_file(f32_gguf, tmp_path, monkeypatch):
    import convert.quant as quant

    from tests.hostile import interrupted_on_call

    monkeypatch.setattr(quant, "quantize_tensor", interrupted_on_call(quant.quantize_tensor, 3))
    with pytest.raises(KeyboardInterrupt):
        quantize_gguf(f32_gguf["odd"], tmp_path / "out.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []


def test_requantizing_is_refused(f32_gguf, tmp_path):
    q8 = quantize_gguf(f32_gguf["odd"], tmp_path / "q8.gguf", "Q8_0")
    with pytest.raises(EdgeftError, match="requantizing from Q8_0"):
        quantize_gguf(q8, tmp_path / "q4.gguf", "Q4_0")
    assert not (tmp_path / "q4.gguf").exists()


def test_cli_quantize_and_unknown_type(f32_gguf, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["quantize", str(f32_gguf["odd"]), "-o", str(tmp_path / "x.gguf"), "--type", "Q4_K_Z"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Q4_K_M" in lines[0] and "Q8_0" in lines[0]
    assert not (tmp_path / "x.gguf").exists()
    result = runner.invoke(main, ["quantize", str(f32_gguf["odd"]), "-o", str(tmp_path / "x.gguf"), "--type", "q8_0"])
    assert result.exit_code == 0, result.output
    assert set(tensor_types(tmp_path / "x.gguf").values()) == {"Q8_0", "F32"}


@needs_ggml
def test_tied_embeddings_fixture(tmp_path):
    model = build_model("qwen2", aligned=True, tie=True)
    f32 = convert_model(model, tmp_path / "tied-f32.gguf", outtype="f32")
    types = tensor_types(f32)
    assert "output.weight" not in types  # tied: the converter writes no output tensor
    out = quantize_gguf(f32, tmp_path / "tied.gguf", "Q4_0")
    assert tensor_types(out)["token_embd.weight"] == "Q6_K"  # tied: the embedding takes the output rule
    assert tensor_types(out)["blk.0.attn_q.weight"] == "Q4_0"



def test_lean_reader_agrees_with_gguf_reader(f32_gguf, tmp_path):
    from convert.gguf_reader import GGUFFile

    lean, full = GGUFFile(f32_gguf["odd"]), GGUFReader(f32_gguf["odd"])
    assert [t.name for t in lean.tensors] == [t.name for t in full.tensors]
    for mine, theirs in zip(lean.tensors, full.tensors):
        assert mine.ggml_shape == tuple(int(d) for d in theirs.shape) and mine.qtype == theirs.tensor_type
        assert np.array_equal(lean.data(mine), np.asarray(theirs.data).view(np.uint8).reshape(-1))
    assert lean.value("general.architecture") == "llama"
    assert lean.value("llama.block_count") == full.fields["llama.block_count"].contents()
    assert lean.value("tokenizer.ggml.tokens") == full.fields["tokenizer.ggml.tokens"].contents()[0]
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(f32_gguf["odd"].read_bytes()[:-4096])
    with pytest.raises(EdgeftError, match="truncated"):
        GGUFFile(truncated)
    (tmp_path / "text.gguf").write_text("hello world, not a model")
    with pytest.raises(EdgeftError, match="not a GGUF"):
        quantize_gguf(tmp_path / "text.gguf", tmp_path / "o.gguf", "Q8_0")
