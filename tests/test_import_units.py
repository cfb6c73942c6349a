"""The pieces of `edgeft import`, each against a reference: every inverse undoes its forward rewrite, the GGUF reader
reads what gguf-py reads, bf16 rounds as torch does, shards load, chat templates render as the original's."""

from __future__ import annotations

import numpy as np
import pytest

from convert.arch.llama import llama3_rope_factors, llama3_rope_parameters
from convert.arch.rewrites import PLUS_ONE, SQUEEZED_CONV, rotary_pairs
from convert.importer import import_gguf
from convert.importer.safetensors_out import float32_to_bf16, write_safetensors
from convert.safetensors_file import SafetensorsReader
from convert.vocab.pretokenizer import PRETOKENIZER_TABLE, detect_pretokenizer, pretokenizer_definition
from convert.common.errors import EdgeftError
from tests.convert_helpers import converted
from tests.factory import build_model


@pytest.mark.parametrize("shape,heads", [((4 * 16, 64), 4), ((2 * 8, 24), 2), ((6 * 10,), 6)])
def test_rotary_permutation_is_inverted(shape, heads):
    weight = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    rewrite = rotary_pairs(heads)
    assert np.array_equal(rewrite.to_hf(rewrite.to_gguf(weight)), weight)
    assert np.array_equal(rewrite.to_gguf(rewrite.to_hf(weight)), weight)
    assert not np.array_equal(rewrite.to_hf(weight), weight)


@pytest.mark.parametrize("rewrite, shape", [(rotary_pairs(4), (4 * 16, 64)), (PLUS_ONE, (64,)),
                                            (PLUS_ONE, (3, 64)), (SQUEEZED_CONV, (96, 1, 3))],
                         ids=["rotary", "plus-one", "plus-one-2d", "squeezed-conv"])
def test_every_rewrite_goes_both_ways_with_its_shapes(rewrite, shape):
    # Halves and small integers: 1 + w and back is exact for them (in general only to float32's rounding of 1 + w).
    weight = np.random.default_rng(0).integers(-8, 8, shape).astype(np.float32) / 2
    gguf = rewrite.to_gguf(weight)
    assert gguf.shape == rewrite.gguf_shape(shape) and rewrite.hf_shape(gguf.shape) == shape
    assert np.array_equal(rewrite.to_hf(gguf), weight)
    if rewrite.rowwise and len(shape) > 1:  # what lets the converter stream a tensor in chunks of rows
        chunks = [rewrite.to_gguf(weight[start:start + 2]) for start in range(0, shape[0], 2)]
        assert np.array_equal(np.concatenate(chunks), gguf)


@pytest.mark.parametrize("rope,theta,dim", [
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     500000.0, 128),  # Llama 3.1
    ({"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
     500000.0, 64),  # Llama 3.2
    ({"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
     500000.0, 16),  # one point on the ramp
    ({"factor": 16.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0, "original_max_position_embeddings": 4096},
     10000.0, 128),  # other low/high: an equivalent set comes back
])
def test_llama3_rope_factors_are_inverted(rope, theta, dim):
    factors = llama3_rope_factors(rope, theta, dim)
    params = llama3_rope_parameters(factors, theta, dim)
    assert np.array_equal(llama3_rope_factors(params, theta, dim), factors)


def test_llama3_rope_inverse_refuses_other_factors():
    with pytest.raises(EdgeftError, match="rope_freqs"):
        llama3_rope_parameters(np.linspace(1.0, 3.0, 8).astype(np.float32) ** 2, 10000.0, 16)


@pytest.mark.parametrize("name", sorted(set(PRETOKENIZER_TABLE.values())))
def test_pretokenizer_table_read_backwards(name):
    from tokenizers import Tokenizer

    definition = pretokenizer_definition(name, source="test")
    assert detect_pretokenizer({"pre_tokenizer": definition}, source="test") == name
    Tokenizer.from_str('{"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}, "pre_tokenizer": '
                       + __import__("json").dumps(definition) + "}")


def test_pretokenizer_unknown_name_is_refused():
    with pytest.raises(EdgeftError, match="'starcoder'"):
        pretokenizer_definition("starcoder", source="x.gguf")


@pytest.mark.parametrize("arch,kw", [("qwen2", {}), ("gemma2", {}), ("phi3", {})])
def test_gguf_file_arrays_match_gguf_py(arch, kw):
    from gguf import GGUFReader

    from gguf import GGUFValueType

    from convert.gguf_reader import GGUFFile

    path = converted(arch, "f32", **kw)
    reference = GGUFReader(path).fields
    ours = GGUFFile(path)
    try:
        for key, entry in ours.kv.items():
            if entry.value_type == GGUFValueType.ARRAY:
                want = reference[key].contents()
                got = ours.array(key)
                assert len(got) == len(want) and all(a == b or np.isclose(a, b) for a, b in zip(got, want)), key
    finally:
        ours.close()


def test_bf16_rounding_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(10000) * 10.0 ** rng.integers(-30, 30, 10000),
                             [0.0, -0.0, np.inf, -np.inf, 1e-40, 3.3895314e38, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]])
    values = values.astype(np.float32)
    want = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(float32_to_bf16(values), want)
    from convert.safetensors_file import bf16_to_float32

    assert np.isnan(bf16_to_float32(float32_to_bf16(np.array([np.nan, -np.nan], np.float32)))).all()
    assert np.array_equal(bf16_to_float32(want), torch.from_numpy(values).to(torch.bfloat16).float().numpy())


def test_bf16_import_and_convert_give_the_same_bits():
    """One bf16 rule: the importer's float32 -> bf16 is the converter's (--outtype bf16), bit for bit, on the inputs
    where rounding rules differ: NaNs of either sign with payloads (signalling too), +-inf, denormals, ties, overflow."""
    from gguf import GGMLQuantizationType

    from convert.quant import quantize_tensor

    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FBFFFFF, 0xFFFFFFFF, 0x7FD2A5A5,
                         0xFFA0C3E1, 0x7F8000FF], dtype=np.uint32)
    special = np.array([np.inf, -np.inf, 0.0, -0.0, 1e-40, -1e-40, 1.4e-45, -1.4e-45, 1.1754942e-38, 3.3895314e38,
                        -3.3895314e38, 3.4028235e38, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8], dtype=np.float32)
    rng = np.random.default_rng(2)
    denormals = (rng.integers(1, 0x800000, 512, dtype=np.uint32) | (rng.integers(0, 2, 512, dtype=np.uint32) << 31))
    values = np.concatenate([nan_bits.view(np.float32), special, denormals.view(np.float32),
                             rng.integers(0, 2 ** 32, 4096, dtype=np.uint64).astype(np.uint32).view(np.float32)])
    values = values[: len(values) // 16 * 16].reshape(-1, 16)
    converter = quantize_tensor(values, GGMLQuantizationType.BF16).view("<u2")
    importer = float32_to_bf16(values)
    assert np.array_equal(importer, converter)
    # a NaN keeps its sign and its top payload bits (only made quiet), as ggml_compute_fp32_to_bf16 does
    assert [hex(b) for b in float32_to_bf16(nan_bits.view(np.float32))[:4]] == ["0x7fc0", "0xffc0", "0x7fc0", "0xffc0"]
    assert float32_to_bf16(nan_bits.view(np.float32))[6] == 0x7FD2
    assert float32_to_bf16(np.float32(1.0)).shape == () and float32_to_bf16(np.float32(1.0)) == 0x3F80


def test_bf16_checkpoint_comes_back_bit_for_bit(tmp_path):
    """A bf16 original, converted to F32 (exact) and imported with --dtype bf16, is the same bf16 bits again."""
    original = build_model("qwen2", tie=True, dtype="bfloat16")
    out = import_gguf(converted("qwen2", "f32", tie=True, dtype="bfloat16"), tmp_path / "hf", dtype="bf16")
    theirs, ours = SafetensorsReader(original), SafetensorsReader(out)
    assert set(ours.names()) == set(theirs.names())
    for name in ours.names():
        assert ours.dtype(name) == "BF16"
        assert np.array_equal(ours.read(name), theirs.read(name)), name


def test_shards_and_index_load(tmp_path, monkeypatch):
    from convert.importer import safetensors_out

    monkeypatch.setattr(safetensors_out, "MAX_SHARD_BYTES", 1200)  # 5 tensors of 512 bytes: three shards
    rng = np.random.default_rng(2)
    tensors = {f"layer.{i}.weight": rng.standard_normal((16, 8)).astype(np.float32) for i in range(5)}
    files = write_safetensors(tmp_path, [(n, t.shape, lambda t=t: t) for n, t in tensors.items()])
    assert len(files) == 3 and (tmp_path / "model.safetensors.index.json").exists()
    reader = SafetensorsReader(tmp_path)
    for name, values in tensors.items():
        assert np.array_equal(reader.read(name), values)
    from safetensors.numpy import load_file  # the reference reader agrees with ours

    assert np.array_equal(load_file(str(files[0]))["layer.0.weight"], tensors["layer.0.weight"])


CHATS = [
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there!"},
     {"role": "assistant", "content": "Hello. 你好"}, {"role": "user", "content": "  What's 2+2?\n"}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue 🙂"},
     {"role": "user", "content": "Thanks"}],
]


@pytest.mark.parametrize("arch,tokenizer", [("llama", "bpe-llama3"), ("qwen2", "bpe-qwen2"), ("llama", "spm-llama2"),
                                            ("mistral", "spm-mistral"), ("phi3", "spm-phi3"), ("gemma2", "spm-gemma")])
def test_chat_template_renders_like_the_original(arch, tokenizer, tmp_path):
    from transformers import AutoTokenizer

    original = build_model(arch, tokenizer=tokenizer)
    out = import_gguf(converted(arch, "f32", tokenizer=tokenizer), tmp_path / "hf")
    theirs, ours = AutoTokenizer.from_pretrained(str(original)), AutoTokenizer.from_pretrained(str(out))
    assert (ours.bos_token, ours.eos_token, ours.pad_token) == (theirs.bos_token, theirs.eos_token, theirs.pad_token)
    for messages in CHATS:
        for generation_prompt in (True, False):
            try:
                want = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            except Exception:  # Gemma refuses a system turn: the import must refuse it too
                with pytest.raises(Exception):
                    ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
                continue
            assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt) == want


@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0", "q4_k_m", "q6_k"])
def test_quantized_gguf_imports_as_its_dequantized_values(outtype, tmp_path):
    """Any type the gguf package reads: importing a quantized GGUF and converting the folder to F32 gives, tensor
    for tensor, exactly gguf.quants.dequantize of the original bytes (the rotary permutation undone and redone)."""
    from gguf import GGUFReader, quants

    from convert import convert_model

    source = converted("llama", outtype, aligned=True)
    folder = import_gguf(source, tmp_path / "hf")
    again = GGUFReader(convert_model(folder, tmp_path / "f32.gguf", outtype="f32"))
    originals = {t.name: t for t in GGUFReader(source).tensors}
    kinds = {originals[t.name].tensor_type.name for t in again.tensors}
    assert len(kinds) > 1 or outtype in ("f16", "bf16")  # K-quant mixes keep some tensors in other types
    for tensor in again.tensors:
        original = originals[tensor.name]
        want = quants.dequantize(original.data, original.tensor_type).reshape(tensor.data.shape)
        assert np.array_equal(tensor.data, want.astype(np.float32)), f"{outtype}: {tensor.name}"


def test_no_architecture_module_imports_one_that_imports_it():
    """Which class a GGUF comes back as is data (import_variants), so llama.py need not import mixtral.py, which
    builds on it: the modules of convert/arch import one way."""
    from tests.test_layers import ROOT, imported_modules, module_name

    graph = {}
    for path in (ROOT / "convert" / "arch").glob("*.py"):
        module = module_name(path)
        found = imported_modules(path.read_text(encoding="utf-8"), module, path.name == "__init__.py")
        graph[module] = {name for _, name in found if name.startswith("convert.arch.")}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(name == goal or (name not in seen and not seen.add(name) and reaches(name, goal, seen))
                   for name in graph.get(start, ()))

    circles = sorted(module for module in graph if reaches(module, module, set()))
    assert not circles, circles
