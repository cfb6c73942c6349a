"""Converter building blocks: the lazy reader, bf16, the rotary rewrite, pre-tokenizer detection, metadata, and the
no-torch border."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convert.arch.rewrites import rotary_pairs
from convert.safetensors_file import SafetensorsReader, bf16_to_float32
from convert.vocab.pretokenizer import LLAMA3_SPLIT, QWEN2_SPLIT, detect_pretokenizer
from convert.common.errors import EdgeftError
from tests.convert_helpers import converted
from tests.factory import build_model

ROOT = Path(__file__).resolve().parent.parent


def test_bf16_widening_is_exact():
    import torch

    values = torch.randn(1000, dtype=torch.float32).to(torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_to_float32(bits), values.float().numpy())


def test_reader_reads_bf16_shards_lazily_and_by_rows():
    from safetensors.torch import load_file

    model_dir = build_model("qwen2", dtype="bfloat16", shards=3)
    reader = SafetensorsReader(model_dir)
    expected = {}
    for shard in model_dir.glob("*.safetensors"):
        expected.update(load_file(shard))
    assert sorted(reader.names()) == sorted(expected)
    name = "model.embed_tokens.weight"
    assert reader.dtype(name) == "BF16" and reader.shape(name) == tuple(expected[name].shape)
    np.testing.assert_array_equal(reader.read(name), expected[name].float().numpy())
    np.testing.assert_array_equal(reader.read_rows(name, 5, 17), expected[name][5:17].float().numpy())


def test_rotary_rewrite_interleaves_halves_per_head():
    head_dim, n_head = 8, 2
    # HF stores each head's rows as [x0 x1 x2 x3 | y0 y1 y2 y3]; llama.cpp wants [x0 y0 x1 y1 x2 y2 x3 y3].
    rows = np.arange(n_head * head_dim)[:, None].astype(np.float32)
    got = rotary_pairs(n_head).to_gguf(rows)[:, 0].astype(int).tolist()
    assert got == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


def test_every_table_names_only_tensors_its_llama_cpp_arch_has():
    import gguf

    from convert.arch import REGISTRY

    arch_by_name = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    for hf_class, cls in REGISTRY.items():
        used = {t for row in cls.tensors.values() for t in (row if isinstance(row, tuple) else (row,))}
        unknown = used - set(gguf.MODEL_TENSORS[arch_by_name[cls.gguf_arch]])
        assert not unknown, f"{hf_class}: {cls.gguf_arch} has no {sorted(t.name for t in unknown)}"


def _bytelevel(use_regex):
    return {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": use_regex}


def _split(regex):
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


@pytest.mark.parametrize("pre_tokenizer,name", [
    ({"type": "Sequence", "pretokenizers": [_split(LLAMA3_SPLIT), _bytelevel(False)]}, "llama-bpe"),
    ({"type": "Sequence", "pretokenizers": [_split(QWEN2_SPLIT), _bytelevel(False)]}, "qwen2"),
    (_bytelevel(True), "gpt-2"),
    ({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _bytelevel(True)]}, "smollm"),
])
def test_pretokenizer_detection(pre_tokenizer, name):
    assert detect_pretokenizer({"pre_tokenizer": pre_tokenizer}, source="t.json") == name


def test_unknown_pretokenizer_is_an_error_unless_overridden():
    odd = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [_split(r"\w+|\s+"), _bytelevel(False)]}}
    with pytest.raises(EdgeftError, match="--pretokenizer"):
        detect_pretokenizer(odd, source="t.json")
    assert detect_pretokenizer(odd, source="t.json", override="gpt-2") == "gpt-2"
    with pytest.raises(EdgeftError, match="not one we know"):
        detect_pretokenizer(odd, source="t.json", override="made-up")
    # A Llama-3 regex with add_prefix_space is not Llama 3's tokenizer.
    prefixed = {"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        _split(LLAMA3_SPLIT), {**_bytelevel(False), "add_prefix_space": True}]}}
    with pytest.raises(EdgeftError):
        detect_pretokenizer(prefixed, source="t.json")


def _fields(path) -> dict:
    import gguf

    return {name: field.contents() for name, field in gguf.GGUFReader(path).fields.items()
            if not name.startswith(("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.scores",
                                    "tokenizer.ggml.token_type"))}


@pytest.mark.parametrize("arch,expected", [
    ("llama", {"general.architecture": "llama", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": True,
               "llama.rope.dimension_count": 16, "general.license": "apache-2.0"}),
    ("mistral", {"general.architecture": "llama", "tokenizer.ggml.model": "llama",
                 "tokenizer.ggml.add_space_prefix": True}),
    ("qwen2", {"tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.add_bos_token": False, "qwen2.rope.freq_base": 1e6}),
    ("qwen3", {"qwen3.attention.key_length": 32, "qwen3.attention.value_length": 32}),
    ("phi3", {"phi3.rope.dimension_count": 16, "tokenizer.ggml.add_bos_token": False}),
    ("gemma2", {"gemma2.attention.sliding_window": 64, "gemma2.final_logit_softcapping": 30.0,
                "gemma2.attn_logit_softcapping": 50.0, "tokenizer.ggml.add_space_prefix": False}),
])
def test_metadata(arch, expected):
    from transformers import AutoTokenizer

    model_dir = build_model(arch)
    fields = _fields(converted(arch, "f32"))
    for key, value in expected.items():
        assert fields[key] == pytest.approx(value) if isinstance(value, float) else fields[key] == value, key
    hf = AutoTokenizer.from_pretrained(str(model_dir))
    assert fields["tokenizer.ggml.eos_token_id"] == hf.eos_token_id
    if hf.bos_token_id is not None:
        assert fields["tokenizer.ggml.bos_token_id"] == hf.bos_token_id
    assert fields["tokenizer.chat_template"] == hf.chat_template
    assert fields["general.file_type"] == 0  # ALL_F32


def test_convert_needs_no_torch(tmp_path):
    """The border: convert/ runs with torch unimportable."""
    model_dir = build_model("llama")
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
            "from convert import convert_model\n"
            f"convert_model({str(model_dir)!r}, {str(tmp_path / 'm.gguf')!r}, outtype='q8_0')\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT, timeout=120)
    assert (tmp_path / "m.gguf").stat().st_size > 0


@pytest.mark.parametrize("values", [
    [f"tok{i} ü 你" for i in range(100)], list(range(-5, 95)), [float(i) / 3 for i in range(100)],
    [True] * 40, [i % 7 - 3 for i in range(50)],
])
def test_bulk_metadata_packing_matches_gguf(values):
    import gguf

    from convert.gguf_writer import BulkGGUFWriter

    plain = gguf.GGUFWriter(None, "llama")
    bulk = BulkGGUFWriter(None, "llama")
    expected = plain._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype=True)
    assert bulk._pack_val(values, gguf.GGUFValueType.ARRAY, add_vtype=True) == expected


def test_gemma2_attention_scale_llama_cpp_cannot_express_is_refused(tmp_path):
    """llama.cpp's gemma2 ignores query_pre_attn_scalar; a config needing another scale must not convert silently."""
    from convert import convert_model

    model_dir = build_model("gemma2", query_pre_attn_scalar=32)  # head_dim is 16
    with pytest.raises(EdgeftError, match="query_pre_attn_scalar"):
        convert_model(model_dir, tmp_path / "m.gguf", outtype="f32")
    assert not list(tmp_path.iterdir())


def test_model_card_license_and_base_model(tmp_path):
    import shutil

    from convert import convert_model

    model_dir = tmp_path / "model"
    shutil.copytree(build_model("qwen2"), model_dir)
    (model_dir / "README.md").write_text("---\nlicense: mit\nbase_model:\n- Qwen/Qwen2.5-0.5B\nlanguage:\n- en\n- fr\n"
                                         "---\n# my fine-tune\n")
    fields = _fields(convert_model(model_dir, tmp_path / "m.gguf", outtype="f32"))
    assert fields["general.license"] == "mit"
    assert fields["general.base_model.count"] == 1
    assert fields["general.base_model.0.name"] == "Qwen2.5-0.5B"
    assert fields["general.base_model.0.organization"] == "Qwen"
    assert fields["general.languages"] == ["en", "fr"]
    assert fields["general.name"] == "model"
