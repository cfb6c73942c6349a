"""Qwen3 dense: GGUF arch `qwen3`. NeoX rotary, explicit head_dim, per-head RMS norms on q and k, no biases."""

from __future__ import annotations

from convert.arch.base import LLAMA_FAMILY_TENSORS, Architecture, register

QWEN3_TENSORS = {
    **LLAMA_FAMILY_TENSORS,
    "model.layers.{bid}.self_attn.q_norm.weight": "blk.{bid}.attn_q_norm.weight",
    "model.layers.{bid}.self_attn.k_norm.weight": "blk.{bid}.attn_k_norm.weight",
    # Qwen3 allows attention biases by config (attention_bias=true); llama.cpp loads them when present.
    "model.layers.{bid}.self_attn.q_proj.bias": "blk.{bid}.attn_q.bias",
    "model.layers.{bid}.self_attn.k_proj.bias": "blk.{bid}.attn_k.bias",
    "model.layers.{bid}.self_attn.v_proj.bias": "blk.{bid}.attn_v.bias",
}


@register("Qwen3ForCausalLM")
class Qwen3(Architecture):
    gguf_arch = "qwen3"
    tensor_map = QWEN3_TENSORS
    model_type = "qwen3"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        config["attention_bias"] = meta.has_tensor("blk.0.attn_q.bias")
        return config
