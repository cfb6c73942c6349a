"""IBM Granite 3.x dense: GGUF arch `granite`. Llama's layout and rotary permutation plus four scalars.

HF Granite scales the token embeddings by `embedding_multiplier`, attention scores by `attention_multiplier` (instead
of 1/sqrt(head_dim)), each residual branch by `residual_multiplier`, and divides the logits by `logits_scaling`.
llama.cpp's granite graph reads them as `granite.embedding_scale`, `.attention.scale`, `.residual_scale` and
`.logit_scale` (src/models/granite.cpp; logit_scale is required). HF Granite has no head_dim setting: it is always
hidden/heads, which is also all llama.cpp's granite loader accepts.
"""

from __future__ import annotations

from convert.arch.base import register
from convert.arch.llama import Llama

# config.json key -> GGUF writer method (llama.cpp key)
GRANITE_SCALARS = {
    "embedding_multiplier": "add_embedding_scale",
    "attention_multiplier": "add_attention_scale",
    "residual_multiplier": "add_residual_scale",
    "logits_scaling": "add_logit_scale",
}


@register("GraniteForCausalLM")
class Granite(Llama):
    gguf_arch = "granite"

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        for key, add in GRANITE_SCALARS.items():
            add_value = getattr(writer, add)
            add_value(float(self.get(key, default=1.0)))

    # ---- the way back (edgeft import) ----
    model_type = "granite"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = super().config_from_gguf(meta)
        config.pop("head_dim", None)
        keys = {"embedding_multiplier": Keys.LLM.EMBEDDING_SCALE, "attention_multiplier": Keys.Attention.SCALE,
                "residual_multiplier": Keys.LLM.RESIDUAL_SCALE, "logits_scaling": Keys.LLM.LOGIT_SCALE}
        for hf_key, gguf_key in keys.items():
            config[hf_key] = float(meta.get(gguf_key, 1.0))
        return config
