"""Phi-3 / Phi-3.5 mini: GGUF arch `phi3`.

HF Phi-3 already stores attention as one fused `qkv_proj` and the MLP as one fused `gate_up_proj` (gate rows first,
then up); llama.cpp's phi3 graph expects exactly that: `attn_qkv` and an `ffn_up` of 2*n_ff rows that it splits in
half itself. So the tensors go across unchanged; only the names differ. Rotary is NeoX-style (no permutation).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from convert.arch.base import Architecture, register
from edgeft.errors import EdgeftError

PHI3_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
    "model.layers.{bid}.input_layernorm.weight": "blk.{bid}.attn_norm.weight",
    "model.layers.{bid}.self_attn.qkv_proj.weight": "blk.{bid}.attn_qkv.weight",
    "model.layers.{bid}.self_attn.o_proj.weight": "blk.{bid}.attn_output.weight",
    "model.layers.{bid}.post_attention_layernorm.weight": "blk.{bid}.ffn_norm.weight",
    "model.layers.{bid}.mlp.gate_up_proj.weight": "blk.{bid}.ffn_up.weight",
    "model.layers.{bid}.mlp.down_proj.weight": "blk.{bid}.ffn_down.weight",
}


@register("Phi3ForCausalLM")
class Phi3(Architecture):
    gguf_arch = "phi3"
    tensor_map = PHI3_TENSORS

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        if self.config.get("sliding_window"):
            # llama.cpp reads the key but currently disables SWA for phi3; written so the GGUF describes the model.
            writer.add_sliding_window(int(self.config["sliding_window"]))
        original = self.config.get("original_max_position_embeddings")
        if original:
            writer.add_rope_scaling_orig_ctx_len(int(original))

    def write_rope_scaling(self, writer) -> None:
        kind = self.rope.get("rope_type", self.rope.get("type", "default"))
        if kind in (None, "default"):
            return
        if kind not in ("longrope", "su"):
            raise EdgeftError(f"{self.model_dir / 'config.json'}: phi3 rope scaling {kind!r} is not supported; expected longrope")
        # LongRoPE: llama.cpp scales attention by this factor and picks long/short factors by context size.
        # Same rule as transformers' longrope: an explicit attention_factor wins, else sqrt(1 + ln(s) / ln(orig)).
        original = int(self.config.get("original_max_position_embeddings") or self.rope["original_max_position_embeddings"])
        scale = float(self.rope.get("factor") or int(self.get("max_position_embeddings")) / original)
        attn_factor = self.rope.get("attention_factor")
        if attn_factor is None:
            attn_factor = 1.0 if scale <= 1.0 else float(np.sqrt(1 + np.log(scale) / np.log(original)))
        writer.add_rope_scaling_attn_factors(float(attn_factor))

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        long, short = self.rope.get("long_factor"), self.rope.get("short_factor")
        if long is not None and short is not None:
            for name, values in (("rope_factors_long.weight", long), ("rope_factors_short.weight", short)):
                factors = np.asarray(values, dtype=np.float32)
                if factors.shape != (self.rotary_dims // 2,):
                    raise EdgeftError(
                        f"{self.model_dir / 'config.json'}: rope_scaling has {factors.size} factors, expected "
                        f"{self.rotary_dims // 2}; the config is inconsistent")
                yield name, factors

    # ---- the way back (edgeft import) ----
    model_type = "phi3"
    extra_tensor_names = ("rope_factors_long.weight", "rope_factors_short.weight")

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = super().config_from_gguf(meta)
        config["sliding_window"] = meta.get(Keys.Attention.SLIDING_WINDOW, None)
        original = meta.get(Keys.Rope.SCALING_ORIG_CTX_LEN, None)
        if original is not None:
            config["original_max_position_embeddings"] = int(original)
        return config

    @classmethod
    def rope_scaling_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        attn_factor = meta.get(Keys.Rope.SCALING_ATTN_FACTOR, None)
        return {} if attn_factor is None else {"attention_factor": float(attn_factor)}

    def read_extra_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        long, short = tensors.pop("rope_factors_long.weight", None), tensors.pop("rope_factors_short.weight", None)
        super().read_extra_tensors(tensors)
        rope = self.config["rope_parameters"]
        if long is None or short is None:
            rope.pop("attention_factor", None)  # only LongRoPE carries one
            return
        original = self.config.get("original_max_position_embeddings")
        if original is None:
            raise EdgeftError("rope_factors_long.weight: LongRoPE factors without phi3.rope.scaling.original_context_length")
        rope.update({"rope_type": "longrope", "original_max_position_embeddings": int(original),
                     "long_factor": [float(x) for x in long], "short_factor": [float(x) for x in short]})
        scale = int(self.config["max_position_embeddings"]) / int(original)
        default = 1.0 if scale <= 1.0 else float(np.sqrt(1 + np.log(scale) / np.log(original)))
        if abs(rope.get("attention_factor", default) - default) < 1e-6:
            rope.pop("attention_factor", None)  # the rule write_rope_scaling applies gives it back
