"""Qwen2 / Qwen2.5: GGUF arch `qwen2`. NeoX-style rotary (no permutation); q/k/v carry biases."""

from __future__ import annotations

from convert.arch.base import LLAMA_FAMILY_TENSORS, Architecture, register

QWEN2_TENSORS = {
    **LLAMA_FAMILY_TENSORS,
    "model.layers.{bid}.self_attn.q_proj.bias": "blk.{bid}.attn_q.bias",
    "model.layers.{bid}.self_attn.k_proj.bias": "blk.{bid}.attn_k.bias",
    "model.layers.{bid}.self_attn.v_proj.bias": "blk.{bid}.attn_v.bias",
}


@register("Qwen2ForCausalLM")
class Qwen2(Architecture):
    gguf_arch = "qwen2"
    tensor_map = QWEN2_TENSORS
    model_type = "qwen2"  # HF Qwen2 always has q/k/v biases, so nothing to read back beyond the shared keys
