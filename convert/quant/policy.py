"""llama.cpp's per-tensor quant-type policy, as tables plus one small function.

Facts from llama.cpp's src/llama-quant.cpp (`tensor_allows_quantization`, `tensor_get_category`,
`llama_tensor_get_type_impl`, `tensor_type_fallback`), restricted to the file types edgeft offers and to dense
(non-MoE, non-Falcon) models. "Q4_K_M" from edgeft picks, tensor by tensor, what llama-quantize picks.

Vocabulary: `ncols` is the contiguous row length (ggml's ne[0], numpy's shape[-1]); block sizes are 32 for
Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 and 256 for the K-quants.
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


# Rules per (file type, category): functions of the tensor's position and the model's shape. `i` is the position
# of this tensor among tensors of its category in llama.cpp's walk order (layer, then name) — for dense models the
# layer index; `n` is how many there are (n_layer for ffn_down, the number of attn_v-like tensors for attn_v).
# A rule returns a type name, or None to keep the file type's default.
RULES: dict[tuple[str, str], Callable[[int, int, dict], str | None]] = {
    # Q2_K: attn_v is small but sensitive; with grouped-query attention (>= 4 query heads per KV head) it is
    # shared by many heads, so it gets Q4_K, otherwise Q3_K.
    ("Q2_K", "attn_v"): lambda i, n, m: "Q4_K" if m["n_gqa"] >= 4 else "Q3_K",
    # Q2_K: ffn_down and attn_output carry the residual stream; Q2_K there costs too much, so Q3_K.
    ("Q2_K", "ffn_down"): lambda i, n, m: "Q3_K",
    ("Q2_K", "attn_output"): lambda i, n, m: "Q3_K",
    # Q3_K_M: the first two attn_v get Q5_K, the rest Q4_K.
    ("Q3_K_M", "attn_v"): lambda i, n, m: "Q5_K" if i < 2 else "Q4_K",
    # Q3_K_M: ffn_down of the first sixteenth of layers Q5_K, others Q4_K (Falcon's Q3_K exception omitted).
    ("Q3_K_M", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 16 else "Q4_K",
    ("Q3_K_M", "attn_output"): lambda i, n, m: "Q4_K",
    # Q4_K_M / Q5_K_M: upgrade attn_v and ffn_down to Q6_K on the use_more_bits layers — this is what "_M" means.
    ("Q4_K_M", "attn_v"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q4_K_M", "ffn_down"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q5_K_M", "attn_v"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    ("Q5_K_M", "ffn_down"): lambda i, n, m: "Q6_K" if use_more_bits(i, n) else None,
    # Q4_K_S: a smaller bump — the first four attn_v and the first eighth of ffn_down get Q5_K.
    ("Q4_K_S", "attn_v"): lambda i, n, m: "Q5_K" if i < 4 else None,
    ("Q4_K_S", "ffn_down"): lambda i, n, m: "Q5_K" if i < n // 8 else None,
    # Q4_0 with an imatrix: the first eighth of ffn_down goes Q4_1 (llama.cpp: "guard against craziness" there);
    # only with an imatrix, so that Q4_0 without one stays what it always was.
    ("Q4_0", "ffn_down"): lambda i, n, m: "Q4_1" if m["has_imatrix"] and i < n // 8 else None,
}

# llama.cpp's "70B" model type (80 layers; llama only with grouped-query attention): 8 query heads share each
# attn_v, which is 8x smaller than attn_q, so Q3_K/Q4_K attn_v become Q5_K for a negligible size increase.
SEVENTY_B = {
    "llama": lambda n_layer, n_gqa: n_layer == 80 and n_gqa > 1,
    "qwen2": lambda n_layer, n_gqa: n_layer == 80,
}
SEVENTY_B_ATTN_V = {"Q3_K": "Q5_K", "Q4_K": "Q5_K"}

# When a row is not a whole number of blocks (e.g. 896 = 3.5 x 256 in Qwen2.5-0.5B), llama.cpp falls back to the
# closest 32-block type of similar size (tensor_type_fallback); if even 32 does not divide the row, F16.
FALLBACK = {
    "Q2_K": "Q4_0", "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_1",
    "Q6_K": "Q8_0",
}

# The output projection (and the token embedding when it is tied to it) decides every logit, so it is kept at
# Q6_K unless the file type is Q8_0 (kept as is); if its rows do not fit the default type's block, Q8_0.
OUTPUT_TYPE, OUTPUT_TYPE_IF_ODD_ROWS = "Q6_K", "Q8_0"

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


def choose_types(
    file_type: str,
    default_type: str,
    tensors: Sequence[tuple[str, tuple[int, ...]]],
    *,
    arch: str = "llama",
    n_layer: int,
    n_gqa: int = 1,
    has_imatrix: bool = False,
    source_types: Mapping[str, str] | None = None,
) -> tuple[dict[str, str], list[str]]:
    """Type name per tensor, plus a list of fallback notes ("name: Q4_K -> Q5_0 (ncols 896)").

    `default_type` is the file type's base tensor type (Q4_K for Q4_K_M...). `source_types` gives each tensor's
    current type for GGUF->GGUF; from an HF checkpoint, tensors that stay unquantized become F32 (1-D/norms, as
    convert_hf_to_gguf writes them) or F16.
    """
    shapes = dict(tensors)
    counts = {"attn_v": sum(category(name) == "attn_v" for name in shapes)}
    counters: dict[str, int] = {}
    # Tied embeddings: with no output.weight, token_embd is also the output projection, so it gets output's type.
    tied = "output.weight" not in shapes
    quantized_file = default_type not in ("F32", "F16", "BF16")
    model = {"n_gqa": n_gqa, "has_imatrix": has_imatrix}
    seventy_b = SEVENTY_B.get(arch, lambda *_: False)(n_layer, n_gqa)
    chosen: dict[str, str] = {}
    notes: list[str] = []
    for name in walk_order(list(shapes)):
        shape = shapes[name]
        if not allows_quantization(name, shape):
            if source_types and name in source_types:
                chosen[name] = source_types[name]
            elif ggml_n_dims(shape) < 2 or name.endswith("_norm.weight"):
                chosen[name] = "F32"
            else:  # what the F16 (or F32/BF16) intermediate GGUF of convert_hf_to_gguf would have held
                chosen[name] = default_type if not quantized_file else "F16"
            continue
        if not quantized_file:  # F32/F16/BF16 files: every quantizable tensor simply takes the file's type
            chosen[name] = default_type
            continue
        ncols = shape[-1]
        cat = category(name)
        new_type = default_type
        if cat == "output" or (tied and cat == "token_embd"):
            if not _fits(default_type, ncols):
                new_type = OUTPUT_TYPE_IF_ODD_ROWS
            elif default_type != "Q8_0":
                new_type = OUTPUT_TYPE
        elif cat in ("attn_v", "ffn_down", "attn_output"):
            position = counters.get(cat, 0)
            count = counts["attn_v"] if cat == "attn_v" else n_layer
            rule = RULES.get((file_type, cat))
            new_type = (rule(position, count, model) if rule else None) or default_type
            if cat == "attn_v" and seventy_b:
                new_type = SEVENTY_B_ATTN_V.get(new_type, new_type)
            counters[cat] = position + 1
        if not _fits(new_type, ncols):
            wanted = new_type
            new_type = FALLBACK.get(new_type, new_type)
            if not _fits(new_type, ncols):
                new_type = "F16"
            notes.append(f"{name}: {wanted} -> {new_type} (ncols {ncols} not a multiple of the block)")
        chosen[name] = new_type
    return chosen, notes
