"""Mixtral: GGUF arch `llama` with experts (llama.cpp's llama graph switches to its MoE branch when expert_count > 0).

Attention is Llama's (q/k rows permuted for llama.cpp's rotary). transformers 5's `save_pretrained()` writes the
original per-expert `block_sparse_moe.experts.N.w{1,2,3}.weight` (w1 gate, w3 up, w2 down) and
`block_sparse_moe.gate.weight`; with `save_original_format=False` it writes its in-memory layout: `mlp.gate.weight`,
fused 3-D `mlp.experts.gate_up_proj` (experts, 2*ff, hidden; gate rows first) and `mlp.experts.down_proj`.
The experts' ff width is `intermediate_size` (llama.cpp reads feed_forward_length for ffn_*_exps).
"""

from __future__ import annotations

from convert.arch.base import register
from convert.arch.llama import Llama
from convert.arch.moe import check_moe_config, expert_counts_from_gguf, moe_tensors, write_expert_counts
from convert.arch.tensors import LLAMA_FAMILY, T

MIXTRAL_TENSORS = moe_tensors(LLAMA_FAMILY, {
    "model.layers.{bid}.block_sparse_moe.gate.weight": T.FFN_GATE_INP,
    "model.layers.{bid}.block_sparse_moe.experts.{xid}.w1.weight": T.FFN_GATE_EXP,
    "model.layers.{bid}.block_sparse_moe.experts.{xid}.w3.weight": T.FFN_UP_EXP,
    "model.layers.{bid}.block_sparse_moe.experts.{xid}.w2.weight": T.FFN_DOWN_EXP,
})


@register("MixtralForCausalLM")
class Mixtral(Llama):
    tensors = MIXTRAL_TENSORS

    def write_hparams(self, writer) -> None:
        check_moe_config(self.config, self.model_dir / "config.json", fields_off={})
        super().write_hparams(writer)
        write_expert_counts(writer, int(self.get("num_local_experts", "num_experts")),
                            int(self.get("num_experts_per_tok")))

    # ---- the way back (edgeft import): per-expert block_sparse_moe tensors, as save_pretrained writes them ----
    model_type = "mixtral"

    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        config = super().config_from_gguf(meta)
        config.update(**expert_counts_from_gguf(meta, "num_local_experts"), sliding_window=None)
        return config
