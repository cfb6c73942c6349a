"""A config.json that contradicts its weights (hidden_size, intermediate_size, head counts, head_dim) converted
"successfully" into a GGUF llama.cpp refuses to load. Now: one line naming the setting, the tensor and both shapes,
and no output. Every architecture's fixture still converts (its own config fits its own weights)."""

from __future__ import annotations

import pytest

from convert import convert_model
from tests.factory import ARCHS, build_model, edited_model
from tests.hostile import invoke, one_line_error

# llama fixture: hidden 64, intermediate 160, 4 heads of 16, 2 KV heads, vocabulary 646
CONTRADICTIONS = [
    ("llama", {"hidden_size": 96}, "hidden_size=96 does not fit tensor model.embed_tokens.weight, whose shape is "
                                   "[646, 64] where that config gives [646, 96]"),
    ("llama", {"intermediate_size": 128}, "intermediate_size=128 does not fit tensor "
                                          "model.layers.0.mlp.down_proj.weight, whose shape is [64, 160] where that "
                                          "config gives [64, 128]"),
    ("llama", {"num_attention_heads": 8}, "num_attention_heads=8 x head_dim=16 = 128 does not fit tensor "
                                          "model.layers.0.self_attn.o_proj.weight, whose shape is [64, 64]"),
    ("llama", {"num_key_value_heads": 4}, "num_key_value_heads=4 x head_dim=16 = 64 does not fit tensor "
                                          "model.layers.0.self_attn.k_proj.weight, whose shape is [32, 64]"),
    ("llama", {"head_dim": 32}, "num_key_value_heads=2 x head_dim=32 = 64 does not fit tensor "
                                "model.layers.0.self_attn.k_proj.weight"),
    # Phi-3's q, k and v are one tensor (its gate and up too: every fixture converting below covers that row);
    # LFM2 gives KV heads per layer (0 for conv layers) and no head_dim
    ("phi3", {"num_key_value_heads": 2}, "num_attention_heads=4 x head_dim=16 + 2 x num_key_value_heads=2 x "
                                         "head_dim=16 = 128 does not fit tensor "
                                         "model.layers.0.self_attn.qkv_proj.weight, whose shape is [192, 64]"),
    ("lfm2", {"num_key_value_heads": 4}, "num_key_value_heads=4 x hidden_size/num_attention_heads=16 = 64 does "
                                         "not fit tensor model.layers.1.self_attn.k_proj.weight"),
]


@pytest.mark.parametrize("arch, changes, needle", CONTRADICTIONS)
def test_a_config_that_contradicts_its_weights_is_one_line(tmp_path, arch, changes, needle):
    model = edited_model(arch, tmp_path, **changes)
    one_line_error(invoke("convert", model, "-o", tmp_path / "m.gguf"), f"{model / 'config.json'}: {needle}",
                   "fix config.json")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_fixture_config_fits_its_weights(tmp_path, arch):
    assert convert_model(build_model(arch), tmp_path / "m.gguf", outtype="f32").is_file()
