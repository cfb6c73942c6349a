"""The MoE and hybrid architectures (Qwen3-MoE, Mixtral, LFM2) beyond conversion parity: `edgeft train` gives an adapter for each (LoRA on
attention and the router for the MoE, the experts frozen), LoRA on the stacked experts is refused in one line, and
config variants llama.cpp runs differently are refused in one line naming the field."""

from __future__ import annotations

import json

import pytest

from tests.factory import build_model, edited_model
from tests.hostile import invoke, one_line_error
from tests.train_helpers import TINY_RECIPE, checked_adapter, toy_data

ARCHS = ("qwen3moe", "mixtral", "lfm2")


# QLoRA: bitsandbytes quantizes the nn.Linear layers (attention, LFM2's projections); MoE experts and the router
# are raw parameters and stay in the compute dtype.
@pytest.mark.parametrize("arch, method", [*((arch, "lora") for arch in ARCHS), ("lfm2", "qlora"),
                                          ("qwen3moe", "qlora")])
def test_train_produces_an_adapter(arch, method, tmp_path):
    pytest.importorskip("torch")
    from edgeft.train import train

    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    # dropout 0: peft's LoRA on a MoE router (a raw parameter) refuses dropout; with the default the router is left
    # out with a warning (test_default_dropout_leaves_the_router_out)
    recipe = {**TINY_RECIPE, "method": method, "dropout": 0.0}
    out = train(build_model(arch), train_path, tmp_path / "out", config=recipe, max_steps=2, progress=False)
    config, names = checked_adapter(out, steps=2)
    modules = {n.split(".")[-3] for n in names if "lora_A" in n}
    if arch == "lfm2":  # attention, the conv layer's projections, the MLP
        assert {"q_proj", "out_proj", "in_proj", "w1", "w2", "w3"} <= modules, names
    else:  # attention and the router; no LoRA on the experts
        assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate"} <= modules and "experts" not in modules, names
        assert config["target_parameters"] == ["gate.weight"]
    # and the adapter goes through the rest of the chain
    result = invoke("merge", "--base", build_model(arch), "--adapter", out, "-o", tmp_path / "merged")
    assert result.exit_code == 0, result.output


def test_default_dropout_leaves_the_router_out(tmp_path):
    pytest.importorskip("torch")
    from edgeft.train import train

    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    with pytest.warns(UserWarning, match="set dropout: 0"):
        out = train(build_model("mixtral"), train_path, tmp_path / "out", config=TINY_RECIPE, max_steps=1,
                    progress=False)
    config = json.loads((out / "adapter_config.json").read_text())
    assert not config.get("target_parameters") and "q_proj" in config["target_modules"]


def test_training_the_experts_is_refused_in_one_line(tmp_path):
    pytest.importorskip("torch")
    from convert.common.errors import EdgeftError
    from edgeft.train import train

    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    with pytest.raises(EdgeftError) as info:
        train(build_model("qwen3moe"), train_path, tmp_path / "out",
              config={**TINY_RECIPE, "target_modules": ["q_proj", "down_proj"], "dropout": 0.0}, max_steps=1, progress=False)
    assert "stacked MoE experts" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("arch, changes, needles", [
    ("qwen3moe", {"shared_expert_intermediate_size": 64}, ["shared_expert_intermediate_size=64", "shared experts"]),
    ("qwen3moe", {"norm_topk_prob": False}, ["norm_topk_prob=False", "renormalises"]),
    ("qwen3moe", {"mlp_only_layers": [0]}, ["mlp_only_layers=[0]"]),
    ("qwen3moe", {"decoder_sparse_step": 2}, ["decoder_sparse_step=2"]),
    ("qwen3moe", {"attention_bias": True}, ["attention_bias=true", "no o_proj bias"]),
    ("mixtral", {"n_shared_experts": 1}, ["n_shared_experts=1"]),
    ("lfm2", {"conv_bias": True}, ["conv_bias"]),
    ("lfm2", {"layer_types": ["conv", "sliding_attention"]}, ["layer_types", "sliding_attention"]),
], ids=["qwen3moe-shared-experts", "qwen3moe-unnormalised", "qwen3moe-dense-layers", "qwen3moe-sparse-step",
        "qwen3moe-attention-bias", "mixtral-shared-experts", "lfm2-conv-bias", "lfm2-layer-kind"])
def test_unsupported_variant_is_one_line(arch, changes, needles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(invoke("convert", edited_model(arch, tmp_path, **changes), "-o", out / "m.gguf"), "config.json",
                   *needles)
    assert not list(out.iterdir())


def test_lfm2_config_with_full_attn_idxs_converts_the_same(tmp_path):
    """Older LFM2 configs name the attention layers (full_attn_idxs) instead of listing layer_types."""
    from gguf import GGUFReader

    from convert import convert_model

    model = edited_model("lfm2", tmp_path, layer_types=None, full_attn_idxs=[1])
    fields = {k: f.contents() for k, f in GGUFReader(convert_model(model, tmp_path / "a.gguf")).fields.items()}
    reference = GGUFReader(convert_model(build_model("lfm2"), tmp_path / "b.gguf"))
    assert fields["lfm2.attention.head_count_kv"] == reference.fields["lfm2.attention.head_count_kv"].contents() == [0, 2]

