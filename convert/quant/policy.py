"""llama.cpp's per-tensor quant-type policy, as tables plus one small function.

Facts from llama.cpp's src/llama-quant.cpp (`tensor_allows_quantization`, `tensor_get_category`,
`llama_tensor_get_type_impl`, `tensor_type_fallback`, `tensor_requires_imatrix`), for every file type of
llama-quantize's menu; Falcon's special cases are left out. "IQ3_M" from edgeft picks, tensor by tensor, what
llama-quantize picks.

Vocabulary: `ncols` is the contiguous row length (ggml's ne[0], numpy's shape[-1]); block sizes are 32 for
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/IQ4_NL/MXFP4 and 256 for the K-quants, the other i-quants and the ternary TQ types.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

# Name fragments that keep a tensor in its source type even though it is a 2-D "weight" (tensor_allows_quantization).
NEVER_QUANTIZED = (
    "_norm.weight",  # norms are tiny and precision-critical
    "ffn_gate_inp.weight",  # MoE router: tiny, and routing errors compound
    "altup", "laurel", "per_layer_model_proj",  # Gemma-3n helpers: very small
    "ssm_conv1d", "shortconv.conv.weight",  # small conv kernels
    "time_mix_first.weight", "attn_rel_b.weight",  # RWKV / T5 small 2-D tables
    ".position_embd", ".rel_pos", ".patch_embd",  # vision position/patch embeddings
)
NEVER_QUANTIZED_EXACT = ("position_embd.weight", "token_types.weight")  # learned positions, BERT token types
# Of those, the ones convert_hf_to_gguf always writes as F32 (whatever --outtype), so an HF -> GGUF conversion gives
# them F32 too: the MoE router, conv kernels, learned positions, RWKV mixing tables (conversion/base.py).
ALWAYS_F32 = ("ffn_gate_inp", "position_embd", "token_types", "ssm_conv1d", "shortconv.conv", "time_mix_first",
              "time_mix_w1", "time_mix_w2", "time_mix_decay_w1", "time_mix_decay_w2", "time_mix_lerp_fused",
              "altup_correct_coef", "altup_predict_coef")

# Tensor category by name (tensor_get_category): first match wins; exact names first, then substrings.
CATEGORY_EXACT = {
    "output.weight": "output",
    "token_embd.weight": "token_embd",
    "per_layer_token_embd.weight": "token_embd",
}
CATEGORY_SUBSTRINGS = (
    ("attn_qkv.weight", "attn_v"),  # fused QKV (phi3) carries the V rows: llama.cpp treats it as attn_v
    ("attn_kv_b.weight", "attn_v"),  # MLA's fused K/V up-projection: same reason
    ("attn_v.weight", "attn_v"),
    ("attn_k.weight", "attn_k"),
    ("attn_q.weight", "attn_q"),
    ("attn_output.weight", "attn_output"),
    ("ffn_up", "ffn_up"),
    ("ffn_gate", "ffn_gate"),
    ("ffn_down", "ffn_down"),
)


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's layer pattern for the _M upgrades: the first and last eighth of the layers, plus every third
    layer in between — the layers whose quantization error hurts perplexity most."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


# File types of llama.cpp's own branch for the 1-2 bit i-quants: there, attn_v, ffn_down and attn_output get their
# own upgrades, attn_q/attn_k/ffn_gate/ffn_up keep the base type, and the "70B" attn_v bump does not apply.
IQ2_FAMILY = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M")


def _iq2_family_rules(file_type: str) -> dict:
    # IQ2_S/IQ2_M spend 3.4 bits (IQ3_S) where IQ2_XXS/IQ2_XS/IQ1_* settle for Q2_K.
    low = "IQ3_S" if file_type in ("IQ2_S", "IQ2_M") else "Q2_K"
    attn_output = {"IQ1_S": "IQ2_XXS", "IQ1_M": "IQ2_XXS", "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S"}.get(file_type)
    return {
        # attn_v is shared by the query heads of its group: with >= 4 per KV head it is worth Q4_K.
        (file_type, "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 or m["n_expert"] >= 4 else low,
        # the first eighth of ffn_down layers is where a 2-bit error hurts most
        (file_type, "ffn_down"): lambda i, n, m: low if i < n // 8 else None,
        (file_type, "attn_output"): lambda i, n, m: attn_output,
    }


# Rules per (file type, category): functions of the tensor's position and the model's shape. `i` is the position
# of this tensor among tensors of its category in llama.cpp's walk order (layer, then name) — for dense models the
# layer index; `n` is how many there are (n_layer for the ffn_* categories, the number of attn_v-like tensors for
# attn_v). `m` holds n_gqa (query heads per KV head) and has_imatrix. A rule returns a type name, or None to keep
# the file type's default. llama.cpp's if/else chains test one file type per branch, so a table keyed by (file type,
# category) says the same; the 8-expert branches are eight_expert_type below, Falcon's are left out.
RULES: dict[tuple[str, str], Callable[[int, int, dict], str | None]] = {
    # Q2_K: attn_v is small but sensitive; with grouped-query attention (>= 4 query heads per KV head) it is
    # shared by many heads, so it gets Q4_K, otherwise Q3_K.
    ("Q2_K", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else "Q3_K",
    # Q2_K: ffn_down and attn_output carry the residual stream; Q2_K there costs too much, so Q3_K.
    ("Q2_K", "ffn_down"): lambda i, n, m: "Q3_K",
    ("Q2_K", "attn_output"): lambda i, n, m: "Q3_K",
    # Q2_K_S: the smaller Q2_K — only GQA's attn_v and the first eighth of ffn_down are upgraded.
    ("Q2_K_S", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else None,
    ("Q2_K_S", "ffn_down"): lambda i, n, m: "Q4_K" if i < n // 8 else None,
    # Q3_K_S: no upgrades at all (output aside). Q3_K_M: the first two attn_v get Q5_K, the rest Q4_K.
    ("Q3_K_M", "attn_v"): lambda i, n, m: "Q5_K" if i < 2 else "Q4_K",
    # Q3_K_M: ffn_down of the first sixteenth of layers Q5_K, others Q4_K (Falcon's Q3_K exception omitted).
    ("Q3_K_M", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 16 else "Q4_K",
    ("Q3_K_M", "attn_output"): lambda i, n, m: "Q4_K",
    # Q3_K_L: attn_v, ffn_down and attn_output all Q5_K.
    ("Q3_K_L", "attn_v"): lambda i, n, m: "Q5_K",
    ("Q3_K_L", "ffn_down"): lambda i, n, m: "Q5_K",
    ("Q3_K_L", "attn_output"): lambda i, n, m: "Q5_K",
    # Q4_K_M / Q5_K_M: upgrade attn_v and ffn_down to Q6_K on the use_more_bits layers — this is what "_M" means.
    ("Q4_K_M", "attn_v"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q4_K_M", "ffn_down"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q5_K_M", "attn_v"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q5_K_M", "ffn_down"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    # Q4_K_S: a smaller bump — the first four attn_v and the first eighth of ffn_down get Q5_K.
    ("Q4_K_S", "attn_v"): lambda i, n, m: "Q5_K" if i < 4 else None,
    ("Q4_K_S", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 8 else None,
    # Q4_0 / Q5_0 with an imatrix: the first eighth of ffn_down goes Q4_1 / Q5_1 (llama.cpp: "guard against
    # craziness" there); only with an imatrix, so that the file without one stays what it always was.
    ("Q4_0", "ffn_down"): lambda i, n, m: "Q4_1" if m["has_imatrix"] and i < n // 8 else None,
    ("Q5_0", "ffn_down"): lambda i, n, m: "Q5_1" if m["has_imatrix"] and i < n // 8 else None,
    # IQ4_NL / IQ4_XS: GQA's attn_v Q5_K; without an imatrix the first eighth of ffn_down Q5_K as well.
    ("IQ4_NL", "attn_v"): lambda i, n, m: "Q5_K" if m["n_gqa"] >= 4 else None,
    ("IQ4_XS", "attn_v"): lambda i, n, m: "Q5_K" if m["n_gqa"] >= 4 else None,
    ("IQ4_NL", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 8 and not m["has_imatrix"] else None,
    ("IQ4_XS", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 8 and not m["has_imatrix"] else None,
    # IQ3_S: GQA's attn_v Q4_K. IQ3_M: the IQ3_S mix with attn_v, attn_output and the first eighth of ffn_down Q4_K.
    ("IQ3_S", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else None,
    ("IQ3_M", "attn_v"): lambda i, n, m: "Q4_K",
    ("IQ3_M", "ffn_down"): lambda i, n, m: "Q4_K" if i < n // 8 else None,
    ("IQ3_M", "attn_output"): lambda i, n, m: "Q4_K",
    # IQ3_XS: IQ3_S base, but attn_q, attn_k and the middle three quarters of ffn_gate/ffn_up go down to IQ3_XXS.
    ("IQ3_XS", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else None,
    ("IQ3_XS", "attn_q"): lambda i, n, m: "IQ3_XXS",
    ("IQ3_XS", "attn_k"): lambda i, n, m: "IQ3_XXS",
    ("IQ3_XS", "ffn_gate"): lambda i, n, m: "IQ3_XXS" if n // 8 <= i < 7 * n // 8 else None,
    ("IQ3_XS", "ffn_up"): lambda i, n, m: "IQ3_XXS" if n // 8 <= i < 7 * n // 8 else None,
    # IQ3_XXS: attn_q/attn_k down to IQ2_S; attn_v and attn_output up; without an imatrix ffn_down is K-quants
    # (Q4_K for the first eighth, Q3_K after) and attn_v IQ3_S, since IQ3_XXS there would need one.
    ("IQ3_XXS", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else "IQ3_XXS" if m["has_imatrix"] else "IQ3_S",
    ("IQ3_XXS", "attn_q"): lambda i, n, m: "IQ2_S",
    ("IQ3_XXS", "attn_k"): lambda i, n, m: "IQ2_S",
    ("IQ3_XXS", "ffn_down"): lambda i, n, m: None if m["has_imatrix"] else "Q4_K" if i < n // 8 else "Q3_K",
    ("IQ3_XXS", "attn_output"): lambda i, n, m: "IQ3_S",
    # IQ2_XXS, IQ2_XS, IQ2_S, IQ2_M, IQ1_S, IQ1_M: see _iq2_family_rules.
    **{key: rule for file_type in IQ2_FAMILY for key, rule in _iq2_family_rules(file_type).items()},
}

# llama.cpp's "70B" model type (80 layers; llama only with grouped-query attention): 8 query heads share each
# attn_v, which is 8x smaller than attn_q, so Q3_K/Q4_K attn_v become Q5_K for a negligible size increase.
# The IQ2 family's branch (and MXFP4_MOE's) comes before this rule in llama.cpp, so they skip it.
SEVENTY_B = {
    "llama": lambda n_layer, n_gqa: n_layer == 80 and n_gqa > 1,
    "qwen2": lambda n_layer, n_gqa: n_layer == 80,
}
SEVENTY_B_ATTN_V = {"Q3_K": "Q5_K", "Q4_K": "Q5_K"}
SEVENTY_B_EXEMPT = IQ2_FAMILY + ("MXFP4_MOE",)

# The output projection (and the token embedding when it is tied to it) decides every logit: Q6_K by default,
# Q5_K in the 1-3 bit i-quant files, Q8_0 kept as is; if its rows do not fit the file's base block, Q8_0.
OUTPUT_TYPE, OUTPUT_TYPE_IF_ODD_ROWS = "Q6_K", "Q8_0"
OUTPUT_TYPES = {"Q8_0": "Q8_0", "MXFP4_MOE": "Q8_0", "IQ3_XXS": "Q5_K", **{ft: "Q5_K" for ft in IQ2_FAMILY}}

# An untied token embedding is only looked up (one row per token), so the lowest-bit files keep it cheaper than
# their blocks would say — but not at 1-2 bits: Q2_K or IQ3_S there, Q4_K for the ternary files.
TOKEN_EMBD_TYPES = {
    "IQ2_XXS": "Q2_K", "IQ2_XS": "Q2_K", "IQ1_S": "Q2_K", "IQ1_M": "Q2_K",
    "IQ2_S": "IQ3_S", "IQ2_M": "IQ3_S", "IQ3_XXS": "IQ3_S",
    "TQ1_0": "Q4_K", "TQ2_0": "Q4_K",
}

# MXFP4_MOE puts MoE expert tensors (3-D, more than one expert) in MXFP4 and every other tensor in Q8_0.
DENSE_TYPE = {"MXFP4_MOE": "Q8_0"}
EXPERT_TYPE = {"MXFP4_MOE": "MXFP4"}

# Models with exactly 8 experts (Mixtral 8x7B / 8x22B): llama.cpp bumps the attention tensors all experts share —
# attn_v and attn_k to Q8_0 (Q4_K in the 1-2 bit files), attn_output to Q5_K in these file types (and no dense
# attn_output rule applies) — and IQ3_M's ffn_down on the use_more_bits layers to Q4_K.
EIGHT_EXPERT_ATTN_OUTPUT_Q5_K = ("Q2_K", "IQ3_XS", "IQ3_XXS", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M",
                                 "IQ3_S", "IQ3_M", "IQ4_XS")


def eight_expert_type(file_type: str, default_type: str, cat: str, i: int, n: int, dense_choice: str) -> str:
    """The type llama.cpp's n_expert == 8 branches give a tensor, from the choice of the dense rules."""
    low_bit = file_type in IQ2_FAMILY
    if cat == "attn_v":
        return dense_choice if low_bit else "Q8_0"
    if cat == "attn_k":
        return "Q4_K" if low_bit else "Q8_0"
    if cat == "attn_output":
        return "Q5_K" if low_bit or file_type in EIGHT_EXPERT_ATTN_OUTPUT_Q5_K else default_type
    if cat == "ffn_down" and file_type == "IQ3_M" and use_more_bits(i, n):
        return "Q4_K"
    return dense_choice

# When a row is not a whole number of blocks (e.g. 896 = 3.5 x 256 in Qwen2.5-0.5B), llama.cpp falls back to the
# closest 32-block type of similar size (tensor_type_fallback); a 32-block type has no smaller block, so it stays;
# if even 32 does not divide the row, F16.
FALLBACK = {
    "IQ1_S": "IQ4_NL", "IQ1_M": "IQ4_NL", "IQ2_XXS": "IQ4_NL", "IQ2_XS": "IQ4_NL", "IQ2_S": "IQ4_NL",
    "IQ3_XXS": "IQ4_NL", "IQ3_S": "IQ4_NL", "IQ4_XS": "IQ4_NL",
    "Q2_K": "Q4_0", "Q3_K": "Q4_0", "TQ1_0": "Q4_0", "TQ2_0": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

# Tensor types llama.cpp will not produce without an importance matrix ("the result will be garbage"), by tensor
# type, plus Q2_K inside a Q2_K_S file; token_embd and output are exempt (tensor_requires_imatrix).
REQUIRES_IMATRIX = ("IQ3_XXS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_M", "IQ1_S")
REQUIRES_IMATRIX_IN_FILE = {"Q2_K_S": ("Q2_K",)}
IMATRIX_EXEMPT = ("token_embd.weight", "per_layer_token_embd.weight", "output.weight")


def requires_imatrix(file_type: str, name: str, tensor_type: str) -> bool:
    """Would llama.cpp refuse to write `name` as `tensor_type` in a `file_type` file without an imatrix?"""
    if name in IMATRIX_EXEMPT:
        return False
    return tensor_type in REQUIRES_IMATRIX or tensor_type in REQUIRES_IMATRIX_IN_FILE.get(file_type, ())


_LAYER = re.compile(r"blk\.(\d+)\.")


def ggml_n_dims(shape: Sequence[int]) -> int:
    """ggml ignores trailing unit dims (leading in numpy order): a (1, 64) tensor is 1-D to it."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims.pop(0)
    return max(1, len(dims))


def allows_quantization(name: str, shape: Sequence[int]) -> bool:
    """1-D tensors, biases, norms and a few small tables stay in their source type."""
    if ggml_n_dims(shape) < 2 or not name.endswith("weight"):
        return False
    if name in NEVER_QUANTIZED_EXACT:
        return False
    return not any(fragment in name for fragment in NEVER_QUANTIZED)


def category(name: str) -> str:
    if name in CATEGORY_EXACT:
        return CATEGORY_EXACT[name]
    for fragment, cat in CATEGORY_SUBSTRINGS:
        if fragment in name:
            return cat
    return "other"


def walk_order(names: Sequence[str]) -> list[str]:
    """llama.cpp's loader sorts tensors by layer (non-layer tensors first), then by name; its counters follow."""

    def key(name: str) -> tuple[int, str]:
        match = _LAYER.match(name)
        return (int(match.group(1)) if match else -1, name)

    return sorted(names, key=key)


def _fits(qtype: str, ncols: int) -> bool:
    return ncols % GGML_QUANT_SIZES[T[qtype]][0] == 0


def _unquantized_type(name: str, shape: tuple[int, ...], default_type: str, source_types) -> str:
    """The type of a tensor llama.cpp never quantizes (1-D, norms, small tables)."""
    if source_types and name in source_types:
        return source_types[name]
    if ggml_n_dims(shape) < 2 or name.endswith("_norm.weight") or any(f in name for f in ALWAYS_F32):
        return "F32"
    # what the F16 (or F32/BF16) intermediate GGUF of convert_hf_to_gguf would have held
    return default_type if default_type in ("F32", "F16", "BF16") else "F16"


def _block_fallback(name: str, wanted: str, ncols: int, notes: list[str]) -> str:
    """`wanted`, or the type llama.cpp falls back to when a row is not a whole number of its blocks."""
    if _fits(wanted, ncols):
        return wanted
    new_type = FALLBACK.get(wanted, wanted)
    if not _fits(new_type, ncols):
        new_type = "F16"
    notes.append(f"{name}: {wanted} -> {new_type} (ncols {ncols} not a multiple of the block)")
    return new_type


def choose_types(
    file_type: str,
    default_type: str,
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    *,
    arch: str = "llama",
    n_layer: int,
    n_gqa: int = 1,
    has_imatrix: bool = False,
    n_expert: int = 0,
    source_types: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Type name per tensor, plus a list of fallback notes ("name: Q4_K -> Q5_0 (ncols 896)").

    `default_type` is the file type's base tensor type (Q4_K for Q4_K_M...). `source_types` gives each tensor's
    current type for GGUF->GGUF; from an HF checkpoint, tensors that stay unquantized become F32 (1-D/norms, as
    convert_hf_to_gguf writes them) or F16.
    """
    shapes = dict(tensors)
    model = {"n_gqa": n_gqa, "has_imatrix": has_imatrix, "n_expert": n_expert, "n_layer": n_layer,
             "n_attn_v": sum(category(name) == "attn_v" for name in shapes),
             # Tied embeddings: with no output.weight, token_embd is also the output projection (output's type).
             "tied": "output.weight" not in shapes,
             "seventy_b": file_type not in SEVENTY_B_EXEMPT and SEVENTY_B.get(arch, lambda *_: False)(n_layer, n_gqa)}
    counters: dict[str, int] = {}
    chosen: dict[str, str] = {}
    notes: list[str] = []
    for name in walk_order(list(shapes)):
        shape = shapes[name]
        if not allows_quantization(name, shape):
            chosen[name] = _unquantized_type(name, shape, default_type, source_types)
        elif default_type in ("F32", "F16", "BF16"):  # unquantized files: every quantizable tensor takes their type
            chosen[name] = default_type
        else:
            wanted = _quantized_type(file_type, default_type, name, shape, model, counters)
            chosen[name] = _block_fallback(name, wanted, shape[-1], notes)
    return chosen, notes


def _quantized_type(file_type: str, default_type: str, name: str, shape: tuple[int, ...], model: dict,
                    counters: dict[str, int]) -> str:
    """llama_tensor_get_type_impl for one quantizable tensor of a quantized file; `counters` counts the tensors of
    each category seen so far in walk order (the rules' position `i`)."""
    cat = category(name)
    if cat == "output" or (model["tied"] and cat == "token_embd"):
        if not _fits(default_type, shape[-1]):
            return OUTPUT_TYPE_IF_ODD_ROWS
        return OUTPUT_TYPES.get(file_type, OUTPUT_TYPE)
    if file_type in DENSE_TYPE:
        experts = len(shape) == 3 and shape[0] > 1  # ggml ne[2] > 1
        return EXPERT_TYPE[file_type] if experts else DENSE_TYPE[file_type]
    if cat == "token_embd":
        return TOKEN_EMBD_TYPES.get(file_type, default_type)
    position = counters.get(cat, 0)
    counters[cat] = position + 1
    count = model["n_attn_v"] if cat == "attn_v" else model["n_layer"]
    rule = RULES.get((file_type, cat))
    new_type = (rule(position, count, model) if rule else None) or default_type
    if cat == "attn_v" and model["seventy_b"]:
        new_type = SEVENTY_B_ATTN_V.get(new_type, new_type)
    if model["n_expert"] == 8:
        new_type = eight_expert_type(file_type, default_type, cat, position, count, new_type)
    return new_type
