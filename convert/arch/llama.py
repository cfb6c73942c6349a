"""Llama 2/3, TinyLlama, SmolLM (and Mistral, see mistral.py): GGUF arch `llama`.

llama.cpp runs `llama` with the original interleaved rotary layout (pairs of adjacent dims), while HF checkpoints
store q/k rows permuted for `rotate_half` (first half / second half). We undo that permutation per head, for q with
n_head and for k with n_head_kv — the one rewrite that, when wrong, still loads and silently gives garbage.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from gguf import TENSOR_NAMES, Keys

from convert.arch.base import Architecture, register
from convert.arch.rewrites import Rewrite, rotary_pairs
from convert.arch.tensors import DENSE_MLP, LLAMA_FAMILY, T, biases, gguf_name

# Llama's attention_bias / mlp_bias configs switch these biases on; llama.cpp loads them when present.
ATTENTION_BIASES = (T.ATTN_Q, T.ATTN_K, T.ATTN_V, T.ATTN_OUT)
ROPE_FREQS = gguf_name(T.ROPE_FREQS)


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


def llama3_rope_parameters(factors: np.ndarray, theta: float, dim: int) -> dict:
    """The inverse of llama3_rope_factors: rope parameters that regenerate `factors` (checked by regenerating).

    The factors fix only where the smooth ramp lies in wavelength (low/old and high/old), not the three numbers
    apart, so we keep Llama 3.1's low=1 and high=4 and solve for the original context from the ramp's points;
    with no point on the ramp any context between the two plateaus gives the same factors: we take the middle."""
    factors = np.asarray(factors, dtype=np.float64)
    factor = float(factors.max())
    low, high = 1.0, 4.0
    wavelen = 2 * math.pi * theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    ramp = (factors > 1.0 + 1e-6) & (factors < factor - 1e-6)
    if ramp.any():
        smooth = (1.0 / factors[ramp] - 1.0 / factor) / (1.0 - 1.0 / factor)
        old_ctx = float(np.median(wavelen[ramp] * (smooth * (high - low) + low)))
        if ramp.sum() >= 2 and np.ptp(wavelen[ramp] * (smooth * (high - low) + low)) > 1e-3 * old_ctx:
            # Another low/high: smooth = old/(high-low) / wavelen - low/(high-low) is a line in 1/wavelen.
            slope, intercept = np.polyfit(1.0 / wavelen[ramp], smooth, 1)
            if intercept < 0:
                high = low - 1.0 / intercept
                old_ctx = slope * (high - low)
    else:
        # The ones end where wavelen < old/high, the full factors start where wavelen > old/low.
        last_one = wavelen[factors <= 1.0 + 1e-6].max(initial=0.0)
        first_full = wavelen[factors >= factor - 1e-6].min(initial=np.inf)
        lo, hi = last_one * high, first_full * low
        old_ctx = math.sqrt(lo * hi) if np.isfinite(hi) and lo > 0 else (hi / 2 if lo == 0 else lo * 2)
    params = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
              "original_max_position_embeddings": int(round(old_ctx))}
    again = llama3_rope_factors(params, theta, dim)
    if again.shape != factors.shape or not np.allclose(again, factors, rtol=1e-5, atol=1e-6):
        from convert.common.errors import EdgeftError

        raise EdgeftError("tensor rope_freqs.weight: not Llama 3.1-style rope scaling factors; cannot be imported")
    return params


@register("LlamaForCausalLM")
class Llama(Architecture):
    gguf_arch = "llama"
    tensors = {**LLAMA_FAMILY, **biases(LLAMA_FAMILY, *ATTENTION_BIASES, *DENSE_MLP)}
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

    def rewrite(self, hf_name: str) -> Rewrite | None:
        heads = self._rotary_heads(hf_name)
        return rotary_pairs(heads) if heads else None

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        if self.rope_type == "llama3":
            yield ROPE_FREQS, llama3_rope_factors(self.rope, self.rope_theta, self.head_dim)

    # ---- the way back (edgeft import) ----
    model_type = "llama"
    extra_tensor_names = (ROPE_FREQS,)
    import_variants = ((Keys.LLM.EXPERT_COUNT, "MixtralForCausalLM"),)  # llama.cpp runs Mixtral as llama + experts

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        config["attention_bias"] = _all_or_none(meta, ATTENTION_BIASES)
        config["mlp_bias"] = _all_or_none(meta, DENSE_MLP)
        return config

    def read_extra_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        factors = tensors.pop(ROPE_FREQS, None)
        super().read_extra_tensors(tensors)
        if factors is not None:
            self.config["rope_parameters"].update(llama3_rope_parameters(factors, self.rope_theta, self.head_dim))
            self.rope.update(self.config["rope_parameters"])


def _all_or_none(meta, tensors: tuple[T, ...]) -> bool:
    """HF Llama has one bias switch for attention and one for the MLP: a GGUF with only some of them has no HF form."""
    present = [meta.has_tensor(gguf_name(tensor, 0, "bias")) for tensor in tensors]
    if any(present) and not all(present):
        from convert.common.errors import EdgeftError

        names = ", ".join(TENSOR_NAMES[tensor].removeprefix("blk.{bid}.") for tensor in tensors)
        raise EdgeftError(f"{meta.path}: biases on only some of {names}; LlamaForCausalLM cannot hold that, so this "
                          "GGUF cannot be imported")
    return all(present)
