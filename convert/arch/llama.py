"""Llama 2/3, TinyLlama, SmolLM (and Mistral, see mistral.py): GGUF arch `llama`.

llama.cpp runs `llama` with the original interleaved rotary layout (pairs of adjacent dims), while HF checkpoints
store q/k rows permuted for `rotate_half` (first half / second half). We undo that permutation per head, for q with
n_head and for k with n_head_kv — the one rewrite that, when wrong, still loads and silently gives garbage.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np

from convert.arch.base import LLAMA_FAMILY_BIASES, LLAMA_FAMILY_TENSORS, Architecture, register


def unpermute_rotary(weight: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half row order -> interleaved pairs, per head (rows are heads*head_dim, any trailing shape)."""
    rows = weight.shape[0]
    return (weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2)
            .reshape(weight.shape))


def llama3_rope_factors(rope: dict, theta: float, dim: int) -> np.ndarray:
    """Per-frequency divisors for Llama 3.1-style rope scaling (the `rope_freqs` tensor llama.cpp applies)."""
    factor = float(rope.get("factor", 8.0))
    low = float(rope.get("low_freq_factor", 1.0))
    high = float(rope.get("high_freq_factor", 4.0))
    old_ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(wavelen < old_ctx / high, 1.0,
                       np.where(wavelen > old_ctx / low, factor, 1.0 / ((1 - smooth) / factor + smooth)))
    return factors.astype(np.float32)


@register("LlamaForCausalLM")
class Llama(Architecture):
    gguf_arch = "llama"
    tensor_map = {**LLAMA_FAMILY_TENSORS, **LLAMA_FAMILY_BIASES}
    supports_llama3_rope = True

    def write_hparams(self, writer) -> None:
        super().write_hparams(writer)
        writer.add_vocab_size(int(self.get("vocab_size")))

    def _rotary_heads(self, hf_name: str) -> int | None:
        if ".self_attn.q_proj." in hf_name:
            return self.n_head
        if ".self_attn.k_proj." in hf_name:
            return self.n_head_kv
        return None

    def transform_tensor(self, hf_name: str, array: np.ndarray) -> np.ndarray:
        heads = self._rotary_heads(hf_name)
        return unpermute_rotary(array, heads) if heads else array

    def transform_is_rowwise(self, hf_name: str) -> bool:
        return self._rotary_heads(hf_name) is None

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.rope.get("rope_type", self.rope.get("type")) == "llama3":
            yield "rope_freqs.weight", llama3_rope_factors(self.rope, self.rope_theta, self.head_dim)
