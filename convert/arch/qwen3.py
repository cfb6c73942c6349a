"""Qwen3 dense: GGUF arch `qwen3`. NeoX rotary, explicit head_dim, per-head RMS norms on q and k, no biases."""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.tensors import LLAMA_FAMILY, QK_NORMS, QKV, T, biases, gguf_name

# Qwen3 allows attention biases by config (attention_bias=true); llama.cpp loads them when present.
QWEN3_TENSORS = {**LLAMA_FAMILY, **QK_NORMS, **biases(LLAMA_FAMILY, *QKV)}


@register("Qwen3ForCausalLM")
class Qwen3(Architecture):
    gguf_arch = "qwen3"
    tensors = QWEN3_TENSORS
    model_type = "qwen3"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        config["attention_bias"] = meta.has_tensor(gguf_name(T.ATTN_Q, 0, "bias"))
        return config
