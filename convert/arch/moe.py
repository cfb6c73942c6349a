"""What the MoE families share: expert hyper-parameters and the refusal of variants llama.cpp's graphs do not run.

Facts from llama.cpp (src/models/qwen3moe.cpp, llama.cpp; conversion/base.py `set_gguf_parameters`): the GGUF says
`expert_count` and `expert_used_count`; qwen3moe and llama's MoE branch call build_moe_ffn with a softmax over all
experts, top-k, and the k weights always renormalised to sum 1 (its `norm_w = true`). transformers computes the same
softmax -> top-k -> renormalise in float32 (Mixtral always, Qwen3-MoE when `norm_topk_prob`); on an exact tie
torch.topk and ggml's argsort may pick different experts, which random float32 weights never produce.
"""

from __future__ import annotations

from gguf import Keys

from convert.arch.tensors import DENSE_MLP, T, TensorTable, without
from convert.common.errors import EdgeftError

# transformers 5's in-memory layout (`save_original_format=False`), the same for every MoE family: the router, and
# the experts fused into 3-D parameters (experts, rows, cols), gate_up cut in half along its rows (gate first).
FUSED_EXPERTS: TensorTable = {
    "model.layers.{bid}.mlp.gate.weight": T.FFN_GATE_INP,
    "model.layers.{bid}.mlp.experts.gate_up_proj": (T.FFN_GATE_EXP, T.FFN_UP_EXP),
    "model.layers.{bid}.mlp.experts.down_proj": T.FFN_DOWN_EXP,
}


def moe_tensors(dense: TensorTable, per_expert: TensorTable) -> TensorTable:
    """A dense family's table with its MLP replaced by routed experts: the checkpoint's own per-expert layout (`{xid}`
    rows, stacked along a new leading axis by expert index) and the fused one."""
    return {**without(dense, *DENSE_MLP), **per_expert, **FUSED_EXPERTS}

# Config fields of MoE variants we do not map (llama.cpp runs them as other archs, e.g. qwen2moe / deepseek2 /
# granitemoeshared, or not at all). A value that is set and not "off" is refused, naming the field.
# field -> the values that mean "not used" (a scaling factor of 1 changes nothing; one expert group is no grouping).
UNMAPPED_MOE_FIELDS = {
    "shared_expert_intermediate_size": (0,), "n_shared_experts": (0,), "num_shared_experts": (0,),
    "shared_intermediate_size": (0,), "moe_shared_expert_intermediate_size": (0,), "first_k_dense_replace": (0,),
    "n_group": (0, 1), "topk_group": (0, 1), "routed_scaling_factor": (1.0,),
}


def check_moe_config(config: dict, config_path, *, fields_off: dict) -> None:
    """One line naming the first field that asks for a variant llama.cpp's graph would run differently."""
    for field, unused in UNMAPPED_MOE_FIELDS.items():
        if config.get(field) is not None and config[field] not in unused:
            raise EdgeftError(f"{config_path}: {field}={config[field]!r} asks for a MoE variant (shared experts, "
                              "expert groups, leading dense layers) that edgeft does not convert; only plain top-k "
                              "routed experts are supported")
    for field, (wanted, why) in fields_off.items():
        value = config.get(field, wanted)
        if value != wanted and value is not None:
            raise EdgeftError(f"{config_path}: {field}={value!r} is not supported: {why}")


def write_expert_counts(writer, n_expert: int, n_expert_used: int) -> None:
    if not 0 < n_expert_used <= n_expert:
        raise EdgeftError(f"num_experts_per_tok={n_expert_used} must be between 1 and the expert count {n_expert}")
    writer.add_expert_count(n_expert)
    writer.add_expert_used_count(n_expert_used)


def expert_counts_from_gguf(meta, count_field: str) -> dict:
    """The inverse of write_expert_counts, under the config field this family names its expert count."""
    return {count_field: int(meta.get(Keys.LLM.EXPERT_COUNT)),
            "num_experts_per_tok": int(meta.get(Keys.LLM.EXPERT_USED_COUNT))}
