"""OLMo 2: GGUF arch `olmo2`. No pre-norms: RMS norms after attention and after the MLP, before each residual add;
RMS norms on q and k over the whole projection (all heads at once, n_embd and n_kv_head*head_dim wide), not per head.

Rotary is NeoX-style in llama.cpp's olmo2 (llama_model_rope_type), the same rotate_half layout HF uses, so nothing
is permuted. llama.cpp's loader requires a separate output tensor and takes head_dim as hidden/heads, so a tied or
other-head_dim config is refused; a sliding window is OLMo 3's and is not written for OLMo 2.
"""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.tensors import LLAMA_FAMILY, POST_NORMS, QK_NORMS, T, without
from convert.common.errors import EdgeftError

# Llama's rows less the pre-attention norm; the post-norms take the place of the pre-MLP one.
OLMO2_TENSORS = {**without(LLAMA_FAMILY, T.ATTN_NORM), **QK_NORMS, **POST_NORMS}


@register("Olmo2ForCausalLM")
class Olmo2(Architecture):
    gguf_arch = "olmo2"
    tensors = OLMO2_TENSORS

    def __init__(self, config, model_dir):
        super().__init__(config, model_dir)
        where = model_dir / "config.json"
        if self.tied_embeddings:
            raise EdgeftError(f"{where}: tie_word_embeddings=true, but llama.cpp's olmo2 needs its own output "
                              "tensor; this variant cannot be converted")
        if self.head_dim != self.n_embd // self.n_head:
            raise EdgeftError(f"{where}: head_dim={self.head_dim}, but llama.cpp's olmo2 uses hidden/heads = "
                              f"{self.n_embd // self.n_head}; this variant cannot be converted")
        if config.get("attention_bias"):
            raise EdgeftError(f"{where}: attention_bias=true is not supported by llama.cpp's olmo2 graph")

    # ---- the way back (edgeft import) ----
    model_type = "olmo2"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        config["attention_bias"] = False
        return config
