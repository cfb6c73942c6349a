"""Sharded checkpoints (index + several files) convert to the same GGUF as the unsharded checkpoint."""

from __future__ import annotations

import numpy as np
import pytest

from tests.convert_helpers import converted


def _contents(path):
    import gguf

    reader = gguf.GGUFReader(path)
    # general.name comes from the folder's name, which differs between the two fixtures.
    fields = {name: (field.types, field.contents()) for name, field in reader.fields.items() if name != "general.name"}
    tensors = {t.name: (t.tensor_type, tuple(t.shape), np.asarray(t.data).tobytes()) for t in reader.tensors}
    order = [t.name for t in reader.tensors]
    return fields, tensors, order


@pytest.mark.parametrize("arch,dtype,outtype", [("llama", "float32", "f32"), ("qwen2", "bfloat16", "q8_0"),
                                                ("mistral", "bfloat16", "f16")])
def test_sharded_equals_unsharded(arch, dtype, outtype):
    one = _contents(converted(arch, outtype, dtype=dtype))
    three = _contents(converted(arch, outtype, dtype=dtype, shards=3))
    assert one[2] == three[2], "tensor order differs"
    assert one[1].keys() == three[1].keys()
    for name in one[1]:
        assert one[1][name] == three[1][name], f"tensor {name} differs"
    assert one[0] == three[0], "metadata differs"


@pytest.mark.parametrize("outtype", ["q4_k_m", "q8_0"])
def test_direct_quantization_equals_convert_then_quantize(outtype, tmp_path):
    """One streaming pass HF -> Q4_K_M gives the same tensors as HF -> F32 GGUF -> quantize (llama-quantize's route)."""
    from convert import convert_model
    from convert.quant.gguf_io import quantize_gguf
    from tests.factory import build_model

    model_dir = build_model("llama", aligned=True)
    direct = convert_model(model_dir, tmp_path / "direct.gguf", outtype=outtype)
    two_step = quantize_gguf(convert_model(model_dir, tmp_path / "f32.gguf", outtype="f32"),
                             tmp_path / "two-step.gguf", outtype)
    one, two = _contents(direct)[1], _contents(two_step)[1]
    assert one.keys() == two.keys()
    for name in one:
        assert one[name] == two[name], f"tensor {name} differs"
