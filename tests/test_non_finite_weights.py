"""Weights that are not numbers stop merge, convert-lora, convert, quantize and import at the tensor that holds
them, in one line naming the file and the tensor, with nothing written (a NaN adapter merged into 86,016 NaN weights
and converted without a word). The check sits where every tensor is read (convert.finite)."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

from convert.finite import has_non_finite
from convert.gguf_reader import GGUFFile
from convert.safetensors_file import SafetensorsFile
from tests.hostile import invoke, one_line_error, tree_state
from tests.test_fsutil import adapter, gguf, model  # noqa: F401  (fixtures)

PACKED = {"F32": "<f", "F16": "<e"}


def _poison_safetensors(path, name, value=float("nan")):
    entry = SafetensorsFile(path).entries[name]
    with open(path, "r+b") as handle:
        handle.seek(entry.start + entry.nbytes // 2)
        handle.write(struct.pack(PACKED[entry.dtype], value))


def _poisoned_copy(source, target, name, value=float("nan")):
    shutil.copytree(source, target)
    weights = next(target.glob("*.safetensors"))
    _poison_safetensors(weights, name, value)
    return target, weights


@pytest.mark.parametrize("values, stored", [
    (np.array([1e30, -3e38, 0.0], np.float32), None),  # squares overflow: values finite all the same
    (np.array([65504.0, -2.0], np.float16), None),
    (np.array([1.0, 1e308], np.float64).view(np.uint8), "F64"),
    (np.array([1, 2**31], np.int64).view(np.uint8), "I64"),
])
def test_finite_values_are_never_refused(values, stored):
    assert not has_non_finite(values, stored)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype, stored", [(np.float32, None), (np.float32, "F32"), (np.float16, "F16"),
                                           (np.float64, "F64"), ("bf16", "BF16")])
def test_each_stored_format_is_read_for_nan_and_inf(bad, dtype, stored):
    values = np.linspace(-2, 2, 301, dtype=np.float32)
    values[150] = bad
    if dtype == "bf16":
        raw = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    else:
        raw = values.astype(dtype) if stored is None else values.astype(dtype).view(np.uint8)
    assert has_non_finite(raw, stored)


def test_merge_refuses_a_nan_adapter_naming_its_tensor(tmp_path, model, adapter):  # noqa: F811
    bad, weights = _poisoned_copy(adapter, tmp_path / "adapter",
                                  "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
    one_line_error(invoke("merge", "--base", model, "--adapter", bad, "-o", tmp_path / "merged"),
                   f"{weights}: tensor base_model.model.model.layers.1.mlp.down_proj.lora_B.weight holds NaN or Inf",
                   "a training run that diverged?")
    assert not (tmp_path / "merged").exists()


def _adapter_on(base, folder):
    """A peft adapter made on `base` itself (the fingerprint check would otherwise refuse the edited base first)."""
    from tests.test_merge import make_adapter

    return make_adapter(base, folder, target_modules=["q_proj"])[0]


def test_merge_refuses_a_base_with_inf_in_a_tensor_it_only_copies(tmp_path, model):  # noqa: F811
    base, weights = _poisoned_copy(model, tmp_path / "base", "model.norm.weight", float("inf"))
    adapter = _adapter_on(base, tmp_path / "adapter")
    one_line_error(invoke("merge", "--base", base, "--adapter", adapter, "-o", tmp_path / "merged", "--no-nf4-report"),
                   f"{weights}: tensor model.norm.weight holds NaN or Inf")
    assert not (tmp_path / "merged").exists()


def test_merge_into_f16_refuses_values_f16_cannot_hold(tmp_path, model):  # noqa: F811
    base, _ = _poisoned_copy(model, tmp_path / "base", "model.layers.0.self_attn.q_proj.weight", 70000.0)
    adapter = _adapter_on(base, tmp_path / "adapter")
    one_line_error(invoke("merge", "--base", base, "--adapter", adapter, "-o", tmp_path / "merged", "--dtype", "f16",
                          "--no-nf4-report"),
                   "merge: tensor model.layers.0.self_attn.q_proj.weight holds NaN or Inf",
                   "do not fit F16; merge with --dtype f32")
    assert not (tmp_path / "merged").exists()


def test_convert_lora_refuses_a_nan_adapter(tmp_path, model, adapter):  # noqa: F811
    bad, weights = _poisoned_copy(adapter, tmp_path / "adapter",
                                  "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
    one_line_error(invoke("convert-lora", bad, "--base", model, "-o", tmp_path / "a.gguf"),
                   f"{weights}: tensor base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight holds NaN")
    assert not (tmp_path / "a.gguf").exists()


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_convert_refuses_a_nan_weight(tmp_path, model, outtype):  # noqa: F811
    bad, weights = _poisoned_copy(model, tmp_path / "model", "model.layers.1.mlp.up_proj.weight")
    one_line_error(invoke("convert", bad, "-o", tmp_path / "m.gguf", "--outtype", outtype),
                   f"{weights}: tensor model.layers.1.mlp.up_proj.weight holds NaN or Inf")
    assert not (tmp_path / "m.gguf").exists()


def _poisoned_gguf(source, target, name):
    shutil.copyfile(source, target)
    with GGUFFile(target) as reader:
        offset = next(t.offset for t in reader.tensors if t.name == name)
    with open(target, "r+b") as handle:
        handle.seek(offset + 8)
        handle.write(struct.pack("<f", float("nan")))
    return target


@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "output_norm.weight"])  # quantized / kept F32
def test_quantize_refuses_a_nan_weight(tmp_path, gguf, name):  # noqa: F811
    bad = _poisoned_gguf(gguf, tmp_path / "bad.gguf", name)
    before = tree_state(tmp_path)
    one_line_error(invoke("quantize", bad, "-o", tmp_path / "q.gguf", "--type", "Q8_0"),
                   f"{bad}: tensor {name} holds NaN or Inf")
    assert tree_state(tmp_path) == before


def test_import_refuses_a_nan_weight(tmp_path, gguf):  # noqa: F811
    bad = _poisoned_gguf(gguf, tmp_path / "bad.gguf", "blk.1.ffn_down.weight")
    one_line_error(invoke("import", bad, "-o", tmp_path / "hf"), f"{bad}: tensor blk.1.ffn_down.weight holds NaN")
    assert not (tmp_path / "hf").exists()
