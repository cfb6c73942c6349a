"""Gemma 2: GGUF arch `gemma2`.

Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's norm multiplies by the weight, so every norm weight gets +1
here. Embeddings are always tied (llama.cpp reads token_embd for the output). llama.cpp scales queries by
1/sqrt(head_dim) for every size but the 27B (1/sqrt(hidden/heads)), ignoring `query_pre_attn_scalar`: when a config
asks for anything else the GGUF would load and be subtly wrong, so we refuse.
"""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.rewrites import PLUS_ONE, Rewrite
from convert.arch.tensors import LLAMA_FAMILY, POST_NORMS, T, without
from convert.common.errors import EdgeftError

# Llama's rows less lm_head (always tied), plus the norms after attention and after the MLP.
GEMMA2_TENSORS = {
    **without(LLAMA_FAMILY, T.OUTPUT),
    **POST_NORMS,
    "model.layers.{bid}.pre_feedforward_layernorm.weight": T.FFN_PRE_NORM,
}


@register("Gemma2ForCausalLM")
class Gemma2(Architecture):
    gguf_arch = "gemma2"
    tensors = GEMMA2_TENSORS

    @property
    def tied_embeddings(self) -> bool:
        return True

    layers_of_27b = 46  # the one size whose queries llama.cpp scales by 1/sqrt(hidden/heads)

    @classmethod
    def llama_cpp_query_scalar(cls, n_embd: int, n_head: int, n_layer: int, head_dim: int) -> int:
        return n_embd // n_head if n_layer == cls.layers_of_27b else head_dim

    def check_query_scalar(self) -> None:
        llama_cpp_scalar = self.llama_cpp_query_scalar(self.n_embd, self.n_head, self.n_layer, self.head_dim)
        scalar = self.config.get("query_pre_attn_scalar")
        if scalar is not None and int(scalar) != llama_cpp_scalar:
            raise EdgeftError(
                f"{self.model_dir / 'config.json'}: query_pre_attn_scalar={scalar} but llama.cpp's {self.gguf_arch} "
                f"uses {llama_cpp_scalar} for this shape; the GGUF would be subtly wrong, so it is not written")

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        self.check_query_scalar()
        if self.config.get("sliding_window"):
            writer.add_sliding_window(int(self.config["sliding_window"]))
        for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                         ("final_logit_softcapping", writer.add_final_logit_softcapping)):
            if self.config.get(key) is not None:
                add(float(self.config[key]))

    def rewrite(self, hf_name: str) -> Rewrite | None:
        return PLUS_ONE if hf_name.endswith("norm.weight") else None

    # ---- the way back (edgeft import) ----
    model_type = "gemma2"
    hidden_act = "gelu_pytorch_tanh"

    @classmethod
    def gemma_config(cls, meta) -> dict:
        """What Gemma 2 and 3 read back alike (Architecture's keys, then these, in config.json's order)."""
        from gguf import Keys

        config = super().config_from_gguf(meta)
        config["hidden_activation"] = cls.hidden_act
        config["tie_word_embeddings"] = True
        # What llama.cpp scales queries by (see check_query_scalar): the only value a GGUF can mean.
        config["query_pre_attn_scalar"] = cls.llama_cpp_query_scalar(
            config["hidden_size"], config["num_attention_heads"], config["num_hidden_layers"], config["head_dim"])
        config["sliding_window"] = meta.get(Keys.Attention.SLIDING_WINDOW, None)
        return config

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = cls.gemma_config(meta)
        # HF's defaults are 50 and 30; a GGUF without the keys means no softcapping, so say so.
        config["attn_logit_softcapping"] = meta.get(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, None)
        config["final_logit_softcapping"] = meta.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, None)
        return config
