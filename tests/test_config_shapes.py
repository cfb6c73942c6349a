"""A config.json that contradicts its weights (hidden_size, intermediate_size, head counts, head_dim, the layer count)
converted "successfully" into a GGUF llama.cpp refuses to load; NaN or non-positive rms_norm_eps, rope_theta or
max_position_embeddings into one it loads and answers garbage with; tie_word_embeddings=true beside a trained
lm_head dropped the lm_head. Now: one line naming the setting (and the tensor and both shapes), and no output.
Every architecture's fixture still converts (its own config fits its own weights), tied ones included."""

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
    # the layer count: llama.cpp refuses a file with layers missing or left over
    ("llama", {"num_hidden_layers": 3}, "num_hidden_layers=3 does not fit the weights, which hold layers 0..1 (2 "
                                        "layers)"),
    ("llama", {"num_hidden_layers": 1}, "num_hidden_layers=1 does not fit the weights"),
    # numbers llama.cpp loads without a word and answers garbage with
    ("llama", {"rms_norm_eps": float("nan")}, "rms_norm_eps=nan is not a number above 0"),
    ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": -1.0}}, "rope_theta=-1.0 is not a number "
                                                                                "above 0"),
    ("llama", {"max_position_embeddings": 0}, "max_position_embeddings=0 is not a number above 0"),
    # a trained lm_head the GGUF would drop for the embedding
    ("llama", {"tie_word_embeddings": True}, "tie_word_embeddings=true, but the weights hold an lm_head.weight that "
                                             "is not the embedding model.embed_tokens.weight"),
]


@pytest.mark.parametrize("arch, changes, needle", CONTRADICTIONS)
def test_a_config_that_contradicts_its_weights_is_one_line(tmp_path, arch, changes, needle):
    model = edited_model(arch, tmp_path, **changes)
    one_line_error(invoke("convert", model, "-o", tmp_path / "m.gguf"), f"{model / 'config.json'}: {needle}")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("arch", ARCHS)
def test_every_fixture_config_fits_its_weights(tmp_path, arch):
    assert convert_model(build_model(arch), tmp_path / "m.gguf", outtype="f32").is_file()


def test_a_tied_model_that_saved_its_lm_head_copy_converts(tmp_path):
    """Checkpoints often save the tied lm_head beside the embedding: equal, it is dropped as before."""
    import shutil

    from safetensors.numpy import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(build_model("llama", tie=True), model)
    weights = load_file(str(model / "model.safetensors"))
    weights["lm_head.weight"] = weights["model.embed_tokens.weight"].copy()
    save_file(weights, str(model / "model.safetensors"))
    assert convert_model(model, tmp_path / "m.gguf", outtype="f32").is_file()
