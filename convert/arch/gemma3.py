"""Gemma 3 text (Gemma3ForCausalLM, the 270M/1B text models): GGUF arch `gemma3`.

What differs from Gemma 2 (gemma2.py: norms stored as w and applied as 1 + w, so +1 here; embeddings tied):
- RMS norms on q and k per head (also 1 + w);
- sliding-window and global layers by `layer_types`, written as llama.cpp's per-layer pattern array (its loader
  reads the array before falling back to "every 6th layer global");
- two rope bases: global layers `rope_parameters.full_attention`, local ones `.sliding_attention`
  (`<arch>.rope.freq_base_swa`); rope scaling is llama.cpp's only on global layers (freq_scale_swa is fixed at 1),
  which is also what HF does, so scaling on the local layers is refused;
- no attention softcapping; queries scaled by 1/sqrt(head_dim), except the 62-layer 27B (1/sqrt(hidden/heads));
- embedding rows past the tokenizer's length (Gemma 3 pads its embedding, e.g. 262208 rows for 262145 tokens) are
  cut, as llama.cpp's gemma3 converter does, instead of padding the vocabulary with unused tokens. Only then is the
  embedding read whole (the cut needs absolute row numbers); otherwise it streams in row chunks.
The vision tower of the multimodal checkpoints is not converted: those are refused in one line.
"""

from __future__ import annotations

import numpy as np

from convert.arch.base import Architecture, register
from convert.arch.gemma2 import GEMMA2_TENSORS, Gemma2
from convert.arch.tensors import QK_NORMS
from convert.common.errors import EdgeftError


@register("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration")
class Gemma3(Gemma2):
    gguf_arch = "gemma3"
    tensors = {**GEMMA2_TENSORS, **QK_NORMS}
    layers_of_27b = 62

    def __init__(self, config, model_dir):
        where = model_dir / "config.json"
        field = "vision_config" if config.get("vision_config") else "architectures"
        if field == "vision_config" or "Gemma3ForCausalLM" not in (config.get("architectures") or []):
            raise EdgeftError(f"{where}: {field} says this is a Gemma 3 vision-language checkpoint; edgeft converts "
                              "Gemma 3 text only (Gemma3ForCausalLM)")
        super().__init__(config, model_dir)
        params = config.get("rope_parameters") or {}
        if "full_attention" in params:  # transformers 5: one rope dict per layer type
            self.rope, local = dict(params["full_attention"]), dict(params.get("sliding_attention") or {})
        else:  # transformers 4: rope_theta/rope_scaling for global layers, rope_local_base_freq for local ones
            local = {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", 10000.0)}
        if local.get("rope_type", "default") != "default":
            raise EdgeftError(f"{where}: rope_parameters.sliding_attention.rope_type={local['rope_type']!r}; "
                              "llama.cpp's gemma3 scales rope on global layers only")
        self.local_rope_theta = float(local.get("rope_theta", 10000.0))
        if config.get("attn_logit_softcapping") is not None:
            raise EdgeftError(f"{where}: attn_logit_softcapping is set; llama.cpp's gemma3 has no attention "
                              "softcapping, so the GGUF would be wrong")

    @property
    def n_tokens(self) -> int:
        """The tokenizer's length, with its added tokens (read once, from the files the converter reads)."""
        if not hasattr(self, "_n_tokens"):
            from convert.vocab import load_vocab

            self._n_tokens = len(load_vocab(self.model_dir).tokens)
        return self._n_tokens

    def _cut(self, hf_name: str) -> bool:
        return hf_name == "model.embed_tokens.weight" and int(self.get("vocab_size")) > self.n_tokens

    def gguf_shape(self, hf_name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.n_tokens, *shape[1:]) if self._cut(hf_name) else super().gguf_shape(hf_name, shape)

    def transform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        return super().transform_tensor(hf_name, array[: self.n_tokens] if self._cut(hf_name) else array)

    def transform_is_rowwise(self, hf_name: str) -> bool:
        return not self._cut(hf_name)

    def sliding_layers(self) -> list[bool]:
        types = self.config.get("layer_types")
        if types is None:  # transformers 4: every `sliding_window_pattern`th layer is global
            pattern = int(self.config.get("sliding_window_pattern", 6))
            return [(il + 1) % pattern != 0 for il in range(self.n_layer)]
        return [kind == "sliding_attention" for kind in types]

    def write_hparams(self, writer) -> None:
        Architecture.write_hparams(self, writer)
        self.check_query_scalar()
        sliding = self.sliding_layers()
        if any(sliding) and self.config.get("sliding_window"):
            writer.add_sliding_window(int(self.config["sliding_window"]))
            writer.add_sliding_window_pattern(sliding)
        writer.add_rope_freq_base_swa(self.local_rope_theta)
        if self.config.get("final_logit_softcapping") is not None:
            writer.add_final_logit_softcapping(float(self.config["final_logit_softcapping"]))

    # ---- the way back (edgeft import) ----
    model_type = "gemma3_text"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = cls.gemma_config(meta)
        n_layer = config["num_hidden_layers"]
        sliding = meta.array(Keys.Attention.SLIDING_WINDOW_PATTERN, None) if config["sliding_window"] else None
        config["layer_types"] = ["sliding_attention" if s else "full_attention" for s in (sliding or [False] * n_layer)]
        local = float(meta.get(Keys.Rope.FREQ_BASE_SWA, 10000.0))
        config["rope_parameters"] = {"full_attention": config["rope_parameters"],
                                     "sliding_attention": {"rope_type": "default", "rope_theta": local}}
        config["attn_logit_softcapping"] = None
        config["final_logit_softcapping"] = meta.get(Keys.LLM.FINAL_LOGIT_SOFTCAPPING, None)
        return config
