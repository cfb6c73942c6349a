"""Qwen2 / Qwen2.5: GGUF arch `qwen2`. NeoX-style rotary (no permutation); q/k/v carry biases."""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.tensors import LLAMA_FAMILY, QKV, biases


@register("Qwen2ForCausalLM")
class Qwen2(Architecture):
    gguf_arch = "qwen2"
    tensors = {**LLAMA_FAMILY, **biases(LLAMA_FAMILY, *QKV)}
    model_type = "qwen2"  # HF Qwen2 always has q/k/v biases, so nothing to read back beyond the shared keys
