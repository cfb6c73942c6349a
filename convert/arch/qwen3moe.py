"""Qwen3-MoE: GGUF arch `qwen3moe`. Qwen3's attention (q/k norms, NeoX rotary) with every MLP a routed MoE block.

transformers 5 writes the experts two ways and both are read: `save_pretrained()` reverts to the original
per-expert tensors (`mlp.experts.N.{gate,up,down}_proj.weight`, 2-D each), `save_original_format=False` keeps the
in-memory fused 3-D `mlp.experts.gate_up_proj` (experts, 2*ff, hidden; gate rows first) and `mlp.experts.down_proj`.
llama.cpp wants ffn_{gate,up,down}_exps stacked (experts, rows, cols) and the router as ffn_gate_inp (experts, hidden).
llama.cpp's qwen3moe always renormalises the top-k weights and has no dense layers (see moe.py);
`attention_bias=true` is refused as in qwen3.py (no o_proj bias in llama.cpp's qwen3moe graph either).
"""

from __future__ import annotations

from convert.arch.base import Architecture, register
from convert.arch.moe import check_moe_config, expert_counts_from_gguf, moe_tensors, write_expert_counts
from convert.arch.qwen3 import QWEN3_TENSORS, refuse_attention_bias
from convert.arch.tensors import T

QWEN3MOE_TENSORS = moe_tensors(QWEN3_TENSORS, {
    "model.layers.{bid}.mlp.experts.{xid}.gate_proj.weight": T.FFN_GATE_EXP,
    "model.layers.{bid}.mlp.experts.{xid}.up_proj.weight": T.FFN_UP_EXP,
    "model.layers.{bid}.mlp.experts.{xid}.down_proj.weight": T.FFN_DOWN_EXP,
})


@register("Qwen3MoeForCausalLM")
class Qwen3Moe(Architecture):
    gguf_arch = "qwen3moe"
    tensors = QWEN3MOE_TENSORS
    model_type = "qwen3_moe"

    def __init__(self, config, model_dir):
        super().__init__(config, model_dir)
        refuse_attention_bias(config, model_dir / "config.json", self.gguf_arch)

    def write_hparams(self, writer) -> None:
        check_moe_config(self.config, self.model_dir / "config.json", fields_off={
            "norm_topk_prob": (True, "llama.cpp's qwen3moe always renormalises the top-k expert weights"),
            "mlp_only_layers": ([], "llama.cpp's qwen3moe has no dense MLP layers"),
            "decoder_sparse_step": (1, "llama.cpp's qwen3moe has an MoE block in every layer"),
            "use_sliding_window": (False, "llama.cpp's qwen3moe attends over the whole context"),
        })
        super().write_hparams(writer)
        write_expert_counts(writer, int(self.get("num_experts", "num_local_experts")),
                            int(self.get("num_experts_per_tok")))
        writer.add_expert_feed_forward_length(int(self.get("moe_intermediate_size")))

    # ---- the way back (edgeft import): per-expert tensors, as save_pretrained writes them ----
    @classmethod
    def config_from_gguf(cls, meta) -> dict:
        from gguf import Keys

        config = super().config_from_gguf(meta)
        config.update(**expert_counts_from_gguf(meta, "num_experts"),
                      moe_intermediate_size=int(meta.get(Keys.LLM.EXPERT_FEED_FORWARD_LENGTH)),
                      norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], attention_bias=False)
        return config
