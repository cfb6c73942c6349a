"""Phi-3 / Phi-3.5 mini: GGUF arch `phi3`.

HF Phi-3 already stores attention as one fused `qkv_proj` and the MLP as one fused `gate_up_proj` (gate rows first,
then up); llama.cpp's phi3 graph expects exactly that: `attn_qkv` and an `ffn_up` of 2*n_ff rows that it splits in
half itself. So the tensors go across unchanged; only the names differ. Rotary is NeoX-style (no permutation).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from convert.arch.base import Architecture, register
from convert.arch.tensors import LLAMA_FAMILY, QKV, T, gguf_name, without
from convert.config_shapes import EMBD, FFN, HEADS, KEY, KV_HEADS
from convert.common.errors import EdgeftError

# Llama's rows with attention and the gate/up pair each one fused tensor, as llama.cpp's phi3 graph takes them.
PHI3_TENSORS = {
    **without(LLAMA_FAMILY, *QKV, T.FFN_GATE, T.FFN_UP),
    "model.layers.{bid}.self_attn.qkv_proj.weight": T.ATTN_QKV,
    "model.layers.{bid}.mlp.gate_up_proj.weight": T.FFN_UP,
}
ROPE_FACTORS = {"long_factor": gguf_name(T.ROPE_FACTORS_LONG), "short_factor": gguf_name(T.ROPE_FACTORS_SHORT)}


@register("Phi3ForCausalLM")
class Phi3(Architecture):
    gguf_arch = "phi3"
    tensors = PHI3_TENSORS
    # q, k and v fused, gate and up fused: llama.cpp's {n_embd, n_embd + 2*n_embd_gqa} and {n_embd, 2*n_ff}
    expected_shapes = {"blk.attn_qkv.weight": ([(HEADS, KEY), (2, KV_HEADS, KEY)], (EMBD,)),
                       "blk.ffn_up.weight": ((2, FFN), (EMBD,))}

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        if self.config.get("sliding_window"):
            # llama.cpp reads the key but currently disables SWA for phi3; written so the GGUF describes the model.
            writer.add_sliding_window(int(self.config["sliding_window"]))
        original = self.config.get("original_max_position_embeddings")
        if original:
            writer.add_rope_scaling_orig_ctx_len(int(original))

    def write_rope_scaling(self, writer) -> None:
        kind = self.rope_type
        if kind == "default":
            return
        if kind not in ("longrope", "su"):
            raise EdgeftError(f"{self.model_dir / 'config.json'}: phi3 rope scaling {kind!r} is not supported; "
                              "expected longrope")
        # LongRoPE: llama.cpp scales attention by this factor and picks long/short factors by context size.
        # Same rule as transformers' longrope: an explicit attention_factor wins, else sqrt(1 + ln(s) / ln(orig)).
        original = int(self.config.get("original_max_position_embeddings")
                       or self.rope["original_max_position_embeddings"])
        scale = float(self.rope.get("factor") or int(self.get("max_position_embeddings")) / original)
        attn_factor = self.rope.get("attention_factor")
        if attn_factor is None:
            attn_factor = 1.0 if scale <= 1.0 else float(np.sqrt(1 + np.log(scale) / np.log(original)))
        writer.add_rope_scaling_attn_factors(float(attn_factor))

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        if all(self.rope.get(key) is not None for key in ROPE_FACTORS):
            for key, name in ROPE_FACTORS.items():
                factors = np.asarray(self.rope[key], dtype=np.float32)
                if factors.shape != (self.rotary_dims // 2,):
                    raise EdgeftError(
                        f"{self.model_dir / 'config.json'}: rope_scaling has {factors.size} factors, expected "
                        f"{self.rotary_dims // 2}; the config is inconsistent")
                yield name, factors

    # ---- the way back (edgeft import) ----
    model_type = "phi3"
    extra_tensor_names = tuple(ROPE_FACTORS.values())

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
        factors = {key: tensors.pop(name, None) for key, name in ROPE_FACTORS.items()}
        super().read_extra_tensors(tensors)
        rope = self.config["rope_parameters"]
        if any(values is None for values in factors.values()):
            rope.pop("attention_factor", None)  # only LongRoPE carries one
            return
        original = self.config.get("original_max_position_embeddings")
        if original is None:
            raise EdgeftError(f"{ROPE_FACTORS['long_factor']}: LongRoPE factors without "
                              "phi3.rope.scaling.original_context_length")
        rope.update({"rope_type": "longrope", "original_max_position_embeddings": int(original),
                     **{key: [float(x) for x in values] for key, values in factors.items()}})
        scale = int(self.config["max_position_embeddings"]) / int(original)
        default = 1.0 if scale <= 1.0 else float(np.sqrt(1 + np.log(scale) / np.log(original)))
        if abs(rope.get("attention_factor", default) - default) < 1e-6:
            rope.pop("attention_factor", None)  # the rule write_rope_scaling applies gives it back
