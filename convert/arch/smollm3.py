"""SmolLM3: GGUF arch `smollm3`. Llama's layout and rotary permutation, but every 4th layer skips rotary (NoPE).

llama.cpp does not read the NoPE layers from the GGUF: its loader fixes `n_no_rope_layer_step = 4` and its graph
rotates layer il unless (il + 1) % 4 == 0 (src/models/smollm3.cpp). HF states the same thing per layer in
`no_rope_layers` (1 = rotary, 0 = NoPE); a config whose list is anything else would load and run wrong, so it is
refused. The graph passes no rope-factor tensor and adds no o/ffn biases, so Llama 3.1 rope scaling and biases are
refused too; sliding-window attention is not modelled by llama.cpp's smollm3 graph.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from convert.arch.base import register
from convert.arch.llama import Llama
from convert.arch.tensors import LLAMA_FAMILY
from convert.common.errors import EdgeftError

LLAMA_CPP_NOPE_INTERVAL = 4  # llama_model_smollm3::load_arch_hparams


def llama_cpp_rope_layers(n_layer: int) -> list[int]:
    """`no_rope_layers` as llama.cpp runs it: 1 where the layer uses rotary."""
    return [int((il + 1) % LLAMA_CPP_NOPE_INTERVAL != 0) for il in range(n_layer)]


@register("SmolLM3ForCausalLM")
class SmolLM3(Llama):
    gguf_arch = "smollm3"
    tensors = LLAMA_FAMILY  # no biases, unlike Llama's
    supports_llama3_rope = False

    def __init__(self, config, model_dir):
        super().__init__(config, model_dir)
        where = model_dir / "config.json"
        expected = llama_cpp_rope_layers(self.n_layer)
        layers = config.get("no_rope_layers")
        if layers is not None and [int(x) for x in layers] != expected:
            raise EdgeftError(f"{where}: no_rope_layers={layers} but llama.cpp's smollm3 skips rotary on every "
                              f"{LLAMA_CPP_NOPE_INTERVAL}th layer ({expected}); this variant cannot be converted")
        for key in ("use_sliding_window", "attention_bias", "mlp_bias"):
            if config.get(key):
                raise EdgeftError(f"{where}: {key}=true is not supported by llama.cpp's smollm3 graph")

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(())

    # ---- the way back (edgeft import) ----
    model_type = "smollm3"
    extra_tensor_names = ()

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        n_layer = config["num_hidden_layers"]
        config.update(no_rope_layers=llama_cpp_rope_layers(n_layer), no_rope_layer_interval=LLAMA_CPP_NOPE_INTERVAL,
                      use_sliding_window=False, sliding_window=None, layer_types=["full_attention"] * n_layer)
        return config
