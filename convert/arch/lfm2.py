"""LFM2: GGUF arch `lfm2`. A hybrid of gated short-convolution layers and GQA attention layers, by `layer_types`.

Facts from llama.cpp (conversion/lfm2.py, src/models/lfm2.cpp): a layer is a convolution layer exactly when its
head_count_kv is 0, so head_count_kv is written per layer (the attention value, or 0 for "conv"); the depthwise
Conv1d weight (hidden, 1, L) is stored squeezed to (hidden, L) because ggml_ssm_conv takes a 2-D kernel; the kernel
length goes in shortconv.l_cache. The final norm is HF's `embedding_norm` (applied after the last layer), which
llama.cpp names token_embd_norm. llama.cpp's graph has no conv or projection biases, so `conv_bias` is refused.
The MLP width is HF's own rule (block_auto_adjust_ff_dim), computed as transformers builds the layers.
"""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.rewrites import SQUEEZED_CONV, Rewrite
from convert.arch.tensors import LLAMA_FAMILY, QKV, T
from convert.common.errors import EdgeftError

# Llama's embedding, output and q/k/v rows; LFM2's own names for the rest.
LFM2_TENSORS = {
    **{hf: tensor for hf, tensor in LLAMA_FAMILY.items() if tensor in (T.TOKEN_EMBD, T.OUTPUT, *QKV)},
    "model.embedding_norm.weight": T.TOKEN_EMBD_NORM,
    "model.layers.{bid}.operator_norm.weight": T.ATTN_NORM,
    "model.layers.{bid}.ffn_norm.weight": T.FFN_NORM,
    "model.layers.{bid}.feed_forward.w1.weight": T.FFN_GATE,
    "model.layers.{bid}.feed_forward.w3.weight": T.FFN_UP,
    "model.layers.{bid}.feed_forward.w2.weight": T.FFN_DOWN,
    "model.layers.{bid}.self_attn.out_proj.weight": T.ATTN_OUT,
    "model.layers.{bid}.self_attn.q_layernorm.weight": T.ATTN_Q_NORM,
    "model.layers.{bid}.self_attn.k_layernorm.weight": T.ATTN_K_NORM,
    "model.layers.{bid}.conv.conv.weight": T.SHORTCONV_CONV,
    "model.layers.{bid}.conv.in_proj.weight": T.SHORTCONV_INPROJ,
    "model.layers.{bid}.conv.out_proj.weight": T.SHORTCONV_OUTPROJ,
}
LAYER_KINDS = ("conv", "full_attention")


@register("Lfm2ForCausalLM")
class Lfm2(Architecture):
    gguf_arch = "lfm2"
    tensors = LFM2_TENSORS
    model_type = "lfm2"

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.config.get("tie_embedding", True)))

    @property
    def layer_types(self) -> list[str]:
        if self.config.get("layer_types") is None and self.config.get("full_attn_idxs") is not None:
            # older LFM2 configs list the attention layers instead (transformers derives layer_types the same way)
            attention = set(self.config["full_attn_idxs"])
            return ["full_attention" if i in attention else "conv" for i in range(self.n_layer)]
        kinds = list(self.get("layer_types"))
        odd = next((kind for kind in kinds if kind not in LAYER_KINDS), None)
        if odd is not None or len(kinds) != self.n_layer:
            raise EdgeftError(f"{self.model_dir / 'config.json'}: layer_types must list {self.n_layer} entries of "
                              f"{' / '.join(LAYER_KINDS)}{f', not {odd!r}' if odd else ''}")
        return kinds

    @property
    def feed_forward_length(self) -> int:
        """transformers' Lfm2MLP: 2/3 of block_ff_dim, times the multiplier rounded up to block_multiple_of."""
        width = int(self.get("intermediate_size", "block_ff_dim"))
        if self.config.get("block_auto_adjust_ff_dim", True):
            width = int(2 * width / 3)
            multiplier = self.config.get("block_ffn_dim_multiplier", 1.0)
            if multiplier is not None:
                multiple = int(self.config.get("block_multiple_of", 256))
                width = multiple * ((int(multiplier * width) + multiple - 1) // multiple)
        return width

    def write_hparams(self, writer) -> None:
        if self.config.get("conv_bias"):
            raise EdgeftError(f"{self.model_dir / 'config.json'}: conv_bias=true is not supported: llama.cpp's lfm2 "
                              "graph has no convolution or projection biases")
        writer.add_context_length(int(self.get("max_position_embeddings")))
        writer.add_embedding_length(self.n_embd)
        writer.add_block_count(self.n_layer)
        writer.add_feed_forward_length(self.feed_forward_length)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv([0 if kind == "conv" else self.n_head_kv for kind in self.layer_types])
        writer.add_layer_norm_rms_eps(float(self.get("norm_eps", "rms_norm_eps")))
        writer.add_rope_freq_base(self.rope_theta)
        writer.add_vocab_size(int(self.get("vocab_size")))
        writer.add_shortconv_l_cache(int(self.get("conv_L_cache")))
        self.write_rope_scaling(writer)

    def rewrite(self, hf_name: str) -> Rewrite | None:
        return SQUEEZED_CONV if hf_name.endswith("conv.conv.weight") else None

    # ---- the way back (edgeft import) ----
    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        """The MLP width comes back as the width itself (block_auto_adjust_ff_dim off), which converts to the same
        feed_forward_length; a layer with 0 KV heads is a conv layer."""
        from gguf import Keys

        kv_heads = [int(n) for n in meta.array(Keys.Attention.HEAD_COUNT_KV)]
        config = {
            "architectures": [cls.hf_architecture()], "model_type": cls.model_type,
            "vocab_size": meta.tensor_shape("token_embd.weight")[0],
            "hidden_size": int(meta.get(Keys.LLM.EMBEDDING_LENGTH)),
            "intermediate_size": int(meta.get(Keys.LLM.FEED_FORWARD_LENGTH)), "block_auto_adjust_ff_dim": False,
            "num_hidden_layers": int(meta.get(Keys.LLM.BLOCK_COUNT)),
            "num_attention_heads": int(meta.get(Keys.Attention.HEAD_COUNT)),
            "num_key_value_heads": max(kv_heads),
            "layer_types": ["conv" if n == 0 else "full_attention" for n in kv_heads],
            "max_position_embeddings": int(meta.get(Keys.LLM.CONTEXT_LENGTH)),
            "norm_eps": float(meta.get(Keys.Attention.LAYERNORM_RMS_EPS)),
            "conv_L_cache": int(meta.get(Keys.ShortConv.L_CACHE)), "conv_bias": False,
            "tie_word_embeddings": not meta.has_tensor("output.weight"),
            "rope_parameters": {"rope_type": "default", "rope_theta": float(meta.get(Keys.Rope.FREQ_BASE, 1000000.0))},
        }
        config["rope_parameters"].update(cls.rope_scaling_from_gguf(meta))
        return config
