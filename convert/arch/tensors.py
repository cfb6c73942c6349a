"""HF tensor names -> the `gguf` package's tensor enums: the tables every architecture starts from.

A table maps an HF tensor name (`{bid}` the block index, `{xid}` an expert index, see base.Source) to the
MODEL_TENSOR it fills, or to a tuple of them when one fused HF tensor is cut into that many equal pieces. The GGUF
name is gguf.TENSOR_NAMES' for the enum plus `.bias` for an HF bias and `.weight` for everything else (transformers'
fused 3-D expert parameters have no suffix at all). An architecture lists only what differs from LLAMA_FAMILY:
`{**without(LLAMA_FAMILY, ...), **its own rows}`.
"""

from __future__ import annotations

from gguf import TENSOR_NAMES
from gguf import MODEL_TENSOR as T

TensorTable = dict[str, "T | tuple[T, ...]"]

LLAMA_FAMILY: TensorTable = {
    "model.embed_tokens.weight": T.TOKEN_EMBD,
    "model.norm.weight": T.OUTPUT_NORM,
    "lm_head.weight": T.OUTPUT,
    "model.layers.{bid}.input_layernorm.weight": T.ATTN_NORM,
    "model.layers.{bid}.self_attn.q_proj.weight": T.ATTN_Q,
    "model.layers.{bid}.self_attn.k_proj.weight": T.ATTN_K,
    "model.layers.{bid}.self_attn.v_proj.weight": T.ATTN_V,
    "model.layers.{bid}.self_attn.o_proj.weight": T.ATTN_OUT,
    "model.layers.{bid}.post_attention_layernorm.weight": T.FFN_NORM,
    "model.layers.{bid}.mlp.gate_proj.weight": T.FFN_GATE,
    "model.layers.{bid}.mlp.up_proj.weight": T.FFN_UP,
    "model.layers.{bid}.mlp.down_proj.weight": T.FFN_DOWN,
}
QKV = (T.ATTN_Q, T.ATTN_K, T.ATTN_V)
DENSE_MLP = (T.FFN_GATE, T.FFN_UP, T.FFN_DOWN)

# RMS norms on q and k (per head in Qwen3 and Gemma 3, over the whole projection in OLMo 2): same names either way.
QK_NORMS: TensorTable = {
    "model.layers.{bid}.self_attn.q_norm.weight": T.ATTN_Q_NORM,
    "model.layers.{bid}.self_attn.k_norm.weight": T.ATTN_K_NORM,
}

# Norms after attention and after the MLP, before each residual add (Gemma 2/3, OLMo 2). HF keeps the name
# post_attention_layernorm, which in Llama is the norm before the MLP, so these rows replace Llama's FFN_NORM row.
POST_NORMS: TensorTable = {
    "model.layers.{bid}.post_attention_layernorm.weight": T.ATTN_POST_NORM,
    "model.layers.{bid}.post_feedforward_layernorm.weight": T.FFN_POST_NORM,
}


def without(table: TensorTable, *tensors: T) -> TensorTable:
    """`table` less the rows that fill any of `tensors`."""
    return {hf: tensor for hf, tensor in table.items() if tensor not in tensors}


def biases(table: TensorTable, *tensors: T) -> TensorTable:
    """Bias rows beside the weight rows of `table` that fill `tensors` (configs with attention_bias / mlp_bias)."""
    return {hf.removesuffix("weight") + "bias": tensor for hf, tensor in table.items() if tensor in tensors}


def gguf_name(tensor: T, bid: int | None = None, kind: str = "weight") -> str:
    """The GGUF tensor name: `blk.{bid}.attn_q.weight` as a template, or with the block filled in when given."""
    name = TENSOR_NAMES[tensor]
    return f"{name if bid is None else name.format(bid=bid)}.{kind}"


def gguf_names(table: TensorTable) -> dict[str, str | tuple[str, ...]]:
    """The table with GGUF name templates for values: what the lookups in both directions read."""
    def name(hf: str, tensor: T) -> str:
        return gguf_name(tensor, kind="bias" if hf.endswith(".bias") else "weight")

    return {hf: tuple(name(hf, t) for t in tensors) if isinstance(tensors, tuple) else name(hf, tensors)
            for hf, tensors in table.items()}
