"""Gemma 2: GGUF arch `gemma2`.

Gemma's RMSNorm multiplies by (1 + weight); llama.cpp's norm multiplies by the weight, so every norm weight gets +1
here. Embeddings are always tied (llama.cpp reads token_embd for the output). llama.cpp scales queries by
1/sqrt(head_dim) for every size but the 27B (1/sqrt(hidden/heads)), ignoring `query_pre_attn_scalar`: when a config
asks for anything else the GGUF would load and be subtly wrong, so we refuse.
"""

from __future__ import annotations

import numpy as np

from convert.arch.base import Architecture, register
from edgeft.errors import EdgeftError

GEMMA2_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.q_proj.weight": "blk.{bid}.attn_q.weight",
    "model.layers.{bid}.self_attn.k_proj.weight": "blk.{bid}.attn_k.weight",
    "model.layers.{bid}.self_attn.v_proj.weight": "blk.{bid}.attn_v.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.post_attention_norm.weight",
    "model.layers.{bid}.pre_feedforward_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.post_feedforward_layernorm.weight": "blk.{bid}.post_ffw_norm.weight",
    "model.layers.{bid}.mlp.gate_proj.weight": "blk.{bid}.ffn_gate.weight",
    "model.layers.{bid}.mlp.up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}


@register("Gemma2ForCausalLM")
class Gemma2(Architecture):
    gguf_arch = "gemma2"
    tensor_map = GEMMA2_TENSORS

    @property
    def tied_embeddings(self) -> bool:
        return True

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        llama_cpp_scalar = self.n_embd // self.n_head if self.n_layer == 46 else self.head_dim
        scalar = self.config.get("query_pre_attn_scalar")
        if scalar is not None and int(scalar) != llama_cpp_scalar:
            raise EdgeftError(
                f"{self.model_dir / 'config.json'}: query_pre_attn_scalar={scalar} but llama.cpp's gemma2 uses "
                f"{llama_cpp_scalar} for this shape; the GGUF would be subtly wrong, so it is not written")
        if self.config.get("sliding_window"):
            writer.add_sliding_window(int(self.config["sliding_window"]))
        for key, add in (("attn_logit_softcapping", writer.add_attn_logit_softcapping),
                         ("final_logit_softcapping", writer.add_final_logit_softcapping)):
            if self.config.get(key) is not None:
                add(float(self.config[key]))

    def transform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        if hf_name.endswith("norm.weight"):
            return array + np.float32(1.0)
        return array

    def transform_is_rowwise(self, hf_name: str) -> bool:
        return True  # +1 is elementwise

    # ---- the way back (edgeft import) ----
    model_type = "gemma2"
    hidden_act = "gelu_pytorch_tanh"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = super().config_from_gguf(meta)
        config["hidden_activation"] = cls.hidden_act
        config["tie_word_embeddings"] = True
        n_embd, n_head = config["hidden_size"], config["num_attention_heads"]
        # What llama.cpp scales queries by (see write_hparams): the only value a GGUF can mean.
        config["query_pre_attn_scalar"] = n_embd // n_head if config["num_hidden_layers"] == 46 else config["head_dim"]
        config["sliding_window"] = meta.get(Keys.Attention.SLIDING_WINDOW, None)
        # HF's defaults are 50 and 30; a GGUF without the keys means no softcapping, so say so.
        config["attn_logit_softcapping"] = meta.get(Keys.LLM.ATTN_LOGIT_SOFTCAPPING, None)
        config["final_logit_softcapping"] = meta.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, None)
        return config

    def untransform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        # Exact only to float32 rounding of (1 + w): the GGUF holds fl(1 + w), so w's low bits are gone for good.
        if hf_name.endswith("norm.weight"):
            return array - np.float32(1.0)
        return array
