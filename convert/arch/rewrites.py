"""Per-tensor rewrites between the HF checkpoint's layout and llama.cpp's that have an inverse, each written once:
`to_gguf` is what the converter applies, `to_hf` what `edgeft import` applies, and a test checks every one both ways.

    rotary_pairs(n_head)  q/k rows: HF's rotate_half order (first half / second half of each head) <-> the
                          interleaved pairs llama.cpp rotates (Llama family)
    PLUS_ONE              RMSNorm weights: HF stores w and multiplies by 1 + w, llama.cpp multiplies by what it holds
                          (Gemma 2 and 3); the way back is exact only to float32's rounding of 1 + w
    SQUEEZED_CONV         short-convolution kernels: (hidden, 1, L) <-> (hidden, L) (LFM2)

Example:
    rewrite = rotary_pairs(8)
    assert (rewrite.to_hf(rewrite.to_gguf(q)) == q).all()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Shape = tuple[int, ...]


def _same(value):
    return value


@dataclass(frozen=True)
class Rewrite:
    to_gguf: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    rowwise: bool = False  # to_gguf applies to chunks of rows on their own (so the converter can stream them)
    gguf_shape: Callable[[Shape], Shape] = _same
    hf_shape: Callable[[Shape], Shape] = _same


def _pairs(weight: np.ndarray, n_head: int, halves_first: bool) -> np.ndarray:
    """Swap the (half, pair) axes of each head's rows; rows are heads * head_dim, any trailing shape."""
    half = weight.shape[0] // n_head // 2
    split = (n_head, 2, half) if halves_first else (n_head, half, 2)
    return weight.reshape(*split, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def rotary_pairs(n_head: int) -> Rewrite:
    return Rewrite(to_gguf=lambda weight: _pairs(weight, n_head, halves_first=True),
                   to_hf=lambda weight: _pairs(weight, n_head, halves_first=False))


PLUS_ONE = Rewrite(to_gguf=lambda weight: weight + np.float32(1.0), to_hf=lambda weight: weight - np.float32(1.0),
                   rowwise=True)

SQUEEZED_CONV = Rewrite(to_gguf=lambda kernel: kernel.reshape(kernel.shape[0], kernel.shape[-1]),
                        to_hf=lambda kernel: kernel.reshape(kernel.shape[0], 1, kernel.shape[-1]), rowwise=True,
                        gguf_shape=lambda shape: (shape[0], shape[-1]), hf_shape=lambda shape: (shape[0], 1, shape[-1]))
