"""Mistral v0.1-v0.3 dense models. llama.cpp runs them as arch `llama` (same tensors, same rotary permutation);
the sliding window of v0.1 is not modelled by llama.cpp's `llama` graph, so we do not write it."""

from __future__ import annotations

from convert.arch.base import register
from convert.arch.llama import Llama


@register("MistralForCausalLM")
class Mistral(Llama):
    pass
