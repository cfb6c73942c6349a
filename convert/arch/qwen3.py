"""Qwen3 dense: GGUF arch `qwen3`. NeoX rotary, explicit head_dim, per-head RMS norms on q and k, no biases.

HF Qwen3's `attention_bias=true` puts a bias on q, k, v *and* o_proj (Qwen3Attention). llama.cpp's qwen3 loads and
adds q/k/v biases (llama_model_base::create_tensor_qkv, llm_graph_context::build_qkv) but never creates an o_proj
bias (llama_model_qwen3::load_arch_tensors leaves wo_b null, and a GGUF holding attn_output.bias fails to load with
"wrong number of tensors"), so such a checkpoint has no faithful GGUF and is refused; qwen3moe is the same.
"""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.tensors import LLAMA_FAMILY, QK_NORMS
from convert.common.errors import EdgeftError

QWEN3_TENSORS = {**LLAMA_FAMILY, **QK_NORMS}


def refuse_attention_bias(config: dict, where, gguf_arch: str) -> None:
    if config.get("attention_bias"):
        raise EdgeftError(f"{where}: attention_bias=true puts a bias on o_proj too, but llama.cpp's {gguf_arch} graph "
                          "has no o_proj bias; this checkpoint cannot be run faithfully")


@register("Qwen3ForCausalLM")
class Qwen3(Architecture):
    gguf_arch = "qwen3"
    tensors = QWEN3_TENSORS
    model_type = "qwen3"

    def __init__(self, config, model_dir):
        super().__init__(config, model_dir)
        refuse_attention_bias(config, model_dir / "config.json", self.gguf_arch)

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        return {**super().config_from_gguf(meta), "attention_bias": False}
