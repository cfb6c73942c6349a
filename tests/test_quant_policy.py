"""The per-tensor type policy equals llama.cpp's (src/llama-quant.cpp), one case per rule, and the importance-matrix
refusals equal its tensor_requires_imatrix.

Expected types are written out by hand from the C rules (not computed by the code under test): an 8-layer model
so the layer-position rules (use_more_bits = layers 0, 3, 6, 7 of 8) show, in a 256-aligned and a non-256 width.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T

from convert.quant import FILE_TYPES, parse_file_type, plan_tensor_types, validate_imatrix
from convert.quant.policy import use_more_bits
from convert.common.errors import EdgeftError


def dense_model(n_layer=8, hidden=256, ffn=512, vocab=1024, kv=64, tied=False, fused_qkv=False):
    tensors = [("token_embd.weight", (vocab, hidden)), ("output_norm.weight", (hidden,))]
    if not tied:
        tensors.append(("output.weight", (vocab, hidden)))
    for i in range(n_layer):
        p = f"blk.{i}."
        if fused_qkv:
            tensors.append((p + "attn_qkv.weight", (hidden + 2 * kv, hidden)))
        else:
            tensors += [(p + "attn_q.weight", (hidden, hidden)), (p + "attn_k.weight", (kv, hidden)),
                        (p + "attn_v.weight", (kv, hidden)), (p + "attn_q.bias", (hidden,))]
        tensors += [
            (p + "attn_output.weight", (hidden, hidden)),
            (p + "ffn_gate.weight", (ffn, hidden)), (p + "ffn_up.weight", (ffn, hidden)),
            (p + "ffn_down.weight", (hidden, ffn)),
            (p + "attn_norm.weight", (hidden,)), (p + "ffn_norm.weight", (hidden,)),
        ]
    return tensors


def names(plan):
    return {k: v.name for k, v in plan.items()}


def per_layer(plan, suffix, n_layer=8):
    return [plan[f"blk.{i}.{suffix}"].name for i in range(n_layer)]


# file type -> (base type, attn_v per layer, ffn_down per layer, attn_output, output) for the aligned 8-layer
# model with n_gqa=4 (hidden 256, kv 64). Derived by hand from llama_tensor_get_type_impl.
ALIGNED_8 = {
    "Q8_0": ("Q8_0", ["Q8_0"] * 8, ["Q8_0"] * 8, "Q8_0", "Q8_0"),  # output keeps Q8_0 (rule: != Q8_0 -> Q6_K)
    "Q6_K": ("Q6_K", ["Q6_K"] * 8, ["Q6_K"] * 8, "Q6_K", "Q6_K"),
    # _M: use_more_bits layers 0,3,6,7 get Q6_K on attn_v and ffn_down
    "Q5_K_M": ("Q5_K", ["Q6_K", "Q5_K", "Q5_K", "Q6_K", "Q5_K", "Q5_K", "Q6_K", "Q6_K"],
               ["Q6_K", "Q5_K", "Q5_K", "Q6_K", "Q5_K", "Q5_K", "Q6_K", "Q6_K"], "Q5_K", "Q6_K"),
    "Q5_K_S": ("Q5_K", ["Q5_K"] * 8, ["Q5_K"] * 8, "Q5_K", "Q6_K"),
    "Q4_K_M": ("Q4_K", ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"],
               ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"], "Q4_K", "Q6_K"),
    # _S: first 4 attn_v and first n/8 = 1 ffn_down get Q5_K
    "Q4_K_S": ("Q4_K", ["Q5_K"] * 4 + ["Q4_K"] * 4, ["Q5_K"] + ["Q4_K"] * 7, "Q4_K", "Q6_K"),
    "Q4_0": ("Q4_0", ["Q4_0"] * 8, ["Q4_0"] * 8, "Q4_0", "Q6_K"),
    # Q3_K_M: first 2 attn_v Q5_K, rest Q4_K; ffn_down: n/16 = 0 layers Q5_K, so all Q4_K; attn_output Q4_K
    "Q3_K_M": ("Q3_K", ["Q5_K"] * 2 + ["Q4_K"] * 6, ["Q4_K"] * 8, "Q4_K", "Q6_K"),
    # Q2_K: attn_v Q4_K because n_gqa >= 4; ffn_down and attn_output Q3_K
    "Q2_K": ("Q2_K", ["Q4_K"] * 8, ["Q3_K"] * 8, "Q3_K", "Q6_K"),
}

# Same model with hidden 160 and ffn 384 (neither a multiple of 256): every K type falls back
# (Q2_K/Q3_K -> Q4_0, Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0); output goes straight to Q8_0.
# ffn_down rows are 384 wide: also not a multiple of 256, so it falls back the same way.
ODD_8 = {
    "Q8_0": ("Q8_0", ["Q8_0"] * 8, ["Q8_0"] * 8, "Q8_0", "Q8_0"),
    "Q6_K": ("Q8_0", ["Q8_0"] * 8, ["Q8_0"] * 8, "Q8_0", "Q8_0"),
    "Q5_K_M": ("Q5_1", ["Q8_0", "Q5_1", "Q5_1", "Q8_0", "Q5_1", "Q5_1", "Q8_0", "Q8_0"],
               ["Q8_0", "Q5_1", "Q5_1", "Q8_0", "Q5_1", "Q5_1", "Q8_0", "Q8_0"], "Q5_1", "Q8_0"),
    "Q5_K_S": ("Q5_1", ["Q5_1"] * 8, ["Q5_1"] * 8, "Q5_1", "Q8_0"),
    "Q4_K_M": ("Q5_0", ["Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q8_0"],
               ["Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q5_0", "Q5_0", "Q8_0", "Q8_0"], "Q5_0", "Q8_0"),
    "Q4_K_S": ("Q5_0", ["Q5_1"] * 4 + ["Q5_0"] * 4, ["Q5_1"] + ["Q5_0"] * 7, "Q5_0", "Q8_0"),
    # Q4_0 fits 160, so output first becomes Q6_K, which then falls back to Q8_0
    "Q4_0": ("Q4_0", ["Q4_0"] * 8, ["Q4_0"] * 8, "Q4_0", "Q8_0"),
    "Q3_K_M": ("Q4_0", ["Q5_1"] * 2 + ["Q5_0"] * 6, ["Q5_0"] * 8, "Q5_0", "Q8_0"),
    "Q2_K": ("Q4_0", ["Q5_0"] * 8, ["Q4_0"] * 8, "Q4_0", "Q8_0"),
}


@pytest.mark.parametrize("table,hidden,ffn", [(ALIGNED_8, 256, 512), (ODD_8, 160, 384)], ids=["aligned", "odd"])
@pytest.mark.parametrize("ftype", list(ALIGNED_8))
def test_quantized_file_types(table, hidden, ffn, ftype):
    base, attn_v, ffn_down, attn_output, output = table[ftype]
    plan = plan_tensor_types(ftype, dense_model(hidden=hidden, ffn=ffn), arch="llama", n_layer=8, n_gqa=4)
    assert per_layer(plan, "attn_v.weight") == attn_v
    assert per_layer(plan, "ffn_down.weight") == ffn_down
    assert set(per_layer(plan, "attn_output.weight")) == {attn_output}
    assert plan["output.weight"].name == output
    for other in ("attn_q.weight", "attn_k.weight", "ffn_gate.weight", "ffn_up.weight"):
        assert set(per_layer(plan, other)) == {base}, other
    # untied token embedding: the plain base type (after fallback)
    assert plan["token_embd.weight"].name == base
    # norms and biases are never quantized
    for name, shape in dense_model(hidden=hidden, ffn=ffn):
        if len(shape) == 1:
            assert plan[name] == T.F32, name


# The rest of the menu, same 8-layer model, n_gqa = 4, no imatrix. Per file type: the base type and, where a rule
# changes it, the type per layer of each category (a single name: all 8 layers). Hand-derived from
# llama_tensor_get_type_impl / tensor_type_fallback, in the order: output, token_embd, attn_v, attn_q, attn_k,
# attn_output, ffn_gate, ffn_up, ffn_down. n/8 = 1 (layer 0 only), 7n/8 = 7.
V, D = "attn_v.weight", "ffn_down.weight"
FIRST_EIGHTH = lambda first, rest: [first] + [rest] * 7  # noqa: E731
MIDDLE = lambda edge, middle: [edge] + [middle] * 6 + [edge]  # noqa: E731
NEW_ALIGNED_8 = {
    "MXFP4_MOE": ("Q8_0", {"output": "Q8_0"}),  # MXFP4 is for 3-D expert tensors only; the rest is Q8_0
    "Q5_1": ("Q5_1", {"output": "Q6_K"}),
    "Q5_0": ("Q5_0", {"output": "Q6_K"}),
    "Q4_1": ("Q4_1", {"output": "Q6_K"}),
    "IQ4_NL": ("IQ4_NL", {"output": "Q6_K", V: "Q5_K", D: FIRST_EIGHTH("Q5_K", "IQ4_NL")}),
    "IQ4_XS": ("IQ4_XS", {"output": "Q6_K", V: "Q5_K", D: FIRST_EIGHTH("Q5_K", "IQ4_XS")}),
    "Q3_K_L": ("Q3_K", {"output": "Q6_K", V: "Q5_K", "attn_output.weight": "Q5_K", D: "Q5_K"}),
    "Q3_K_S": ("Q3_K", {"output": "Q6_K"}),
    "IQ3_M": ("IQ3_S", {"output": "Q6_K", V: "Q4_K", "attn_output.weight": "Q4_K", D: FIRST_EIGHTH("Q4_K", "IQ3_S")}),
    "IQ3_S": ("IQ3_S", {"output": "Q6_K", V: "Q4_K"}),
    "IQ3_XS": ("IQ3_S", {"output": "Q6_K", V: "Q4_K", "attn_q.weight": "IQ3_XXS", "attn_k.weight": "IQ3_XXS",
                         "ffn_gate.weight": MIDDLE("IQ3_S", "IQ3_XXS"), "ffn_up.weight": MIDDLE("IQ3_S", "IQ3_XXS")}),
    "IQ3_XXS": ("IQ3_XXS", {"output": "Q5_K", "token_embd": "IQ3_S", V: "Q4_K", "attn_q.weight": "IQ2_S",
                            "attn_k.weight": "IQ2_S", "attn_output.weight": "IQ3_S", D: FIRST_EIGHTH("Q4_K", "Q3_K")}),
    "Q2_K_S": ("Q2_K", {"output": "Q6_K", V: "Q4_K", D: FIRST_EIGHTH("Q4_K", "Q2_K")}),
    "IQ2_M": ("IQ2_S", {"output": "Q5_K", "token_embd": "IQ3_S", V: "Q4_K", "attn_output.weight": "IQ3_S",
                        D: FIRST_EIGHTH("IQ3_S", "IQ2_S")}),
    "IQ2_S": ("IQ2_XS", {"output": "Q5_K", "token_embd": "IQ3_S", V: "Q4_K", "attn_output.weight": "IQ3_S",
                         D: FIRST_EIGHTH("IQ3_S", "IQ2_XS")}),
    "IQ2_XS": ("IQ2_XS", {"output": "Q5_K", "token_embd": "Q2_K", V: "Q4_K", D: FIRST_EIGHTH("Q2_K", "IQ2_XS")}),
    "IQ2_XXS": ("IQ2_XXS", {"output": "Q5_K", "token_embd": "Q2_K", V: "Q4_K", D: FIRST_EIGHTH("Q2_K", "IQ2_XXS")}),
    "IQ1_M": ("IQ1_M", {"output": "Q5_K", "token_embd": "Q2_K", V: "Q4_K", "attn_output.weight": "IQ2_XXS",
                        D: FIRST_EIGHTH("Q2_K", "IQ1_M")}),
    "IQ1_S": ("IQ1_S", {"output": "Q5_K", "token_embd": "Q2_K", V: "Q4_K", "attn_output.weight": "IQ2_XXS",
                        D: FIRST_EIGHTH("Q2_K", "IQ1_S")}),
    "TQ2_0": ("TQ2_0", {"output": "Q6_K", "token_embd": "Q4_K"}),
    "TQ1_0": ("TQ1_0", {"output": "Q6_K", "token_embd": "Q4_K"}),
}
# hidden 160, ffn 384: 256-block i-quants fall back to IQ4_NL, Q2_K/Q3_K/TQ to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1;
# output goes to Q8_0 (straight away when the base block does not fit, via Q6_K's fallback when it does).
NEW_ODD_8 = {
    "MXFP4_MOE": ("Q8_0", {"output": "Q8_0"}),
    "Q5_1": ("Q5_1", {"output": "Q8_0"}),
    "Q5_0": ("Q5_0", {"output": "Q8_0"}),
    "Q4_1": ("Q4_1", {"output": "Q8_0"}),
    "IQ4_NL": ("IQ4_NL", {"output": "Q8_0", V: "Q5_1", D: FIRST_EIGHTH("Q5_1", "IQ4_NL")}),
    "IQ4_XS": ("IQ4_NL", {"output": "Q8_0", V: "Q5_1", D: FIRST_EIGHTH("Q5_1", "IQ4_NL")}),
    "Q3_K_L": ("Q4_0", {"output": "Q8_0", V: "Q5_1", "attn_output.weight": "Q5_1", D: "Q5_1"}),
    "Q3_K_S": ("Q4_0", {"output": "Q8_0"}),
    "IQ3_M": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0", "attn_output.weight": "Q5_0", D: FIRST_EIGHTH("Q5_0", "IQ4_NL")}),
    "IQ3_S": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0"}),
    "IQ3_XS": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0"}),
    "IQ3_XXS": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0", D: FIRST_EIGHTH("Q5_0", "Q4_0")}),
    "Q2_K_S": ("Q4_0", {"output": "Q8_0", V: "Q5_0", D: FIRST_EIGHTH("Q5_0", "Q4_0")}),
    "IQ2_M": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0"}),
    "IQ2_S": ("IQ4_NL", {"output": "Q8_0", V: "Q5_0"}),
    "IQ2_XS": ("IQ4_NL", {"output": "Q8_0", "token_embd": "Q4_0", V: "Q5_0", D: FIRST_EIGHTH("Q4_0", "IQ4_NL")}),
    "IQ2_XXS": ("IQ4_NL", {"output": "Q8_0", "token_embd": "Q4_0", V: "Q5_0", D: FIRST_EIGHTH("Q4_0", "IQ4_NL")}),
    "IQ1_M": ("IQ4_NL", {"output": "Q8_0", "token_embd": "Q4_0", V: "Q5_0", D: FIRST_EIGHTH("Q4_0", "IQ4_NL")}),
    "IQ1_S": ("IQ4_NL", {"output": "Q8_0", "token_embd": "Q4_0", V: "Q5_0", D: FIRST_EIGHTH("Q4_0", "IQ4_NL")}),
    "TQ2_0": ("Q4_0", {"output": "Q8_0", "token_embd": "Q5_0"}),
    "TQ1_0": ("Q4_0", {"output": "Q8_0", "token_embd": "Q5_0"}),
}
PER_LAYER = ("attn_v.weight", "attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_gate.weight",
             "ffn_up.weight", "ffn_down.weight")


@pytest.mark.parametrize("table,hidden,ffn", [(NEW_ALIGNED_8, 256, 512), (NEW_ODD_8, 160, 384)], ids=["aligned", "odd"])
@pytest.mark.parametrize("ftype", list(NEW_ALIGNED_8))
def test_rest_of_the_menu(table, hidden, ftype, ffn):
    base, changed = table[ftype]
    plan = plan_tensor_types(ftype, dense_model(hidden=hidden, ffn=ffn), arch="llama", n_layer=8, n_gqa=4)
    assert plan["output.weight"].name == changed["output"]
    assert plan["token_embd.weight"].name == changed.get("token_embd", base)
    for suffix in PER_LAYER:
        expected = changed.get(suffix, base)
        assert per_layer(plan, suffix) == (expected if isinstance(expected, list) else [expected] * 8), suffix
    assert all(plan[name] == T.F32 for name, shape in dense_model(hidden=hidden, ffn=ffn) if len(shape) == 1)


def test_imatrix_changes_the_mix_where_llama_cpp_says():
    def plan(ftype, **kw):
        return plan_tensor_types(ftype, dense_model(), arch="llama", n_layer=8, has_imatrix=True, **kw)

    # with one, IQ4_NL/IQ4_XS drop their ffn_down guard, IQ3_XXS keeps IQ3_XXS in ffn_down, Q5_0 guards with Q5_1
    assert per_layer(plan("IQ4_XS", n_gqa=4), D) == ["IQ4_XS"] * 8
    assert per_layer(plan("IQ3_XXS", n_gqa=4), D) == ["IQ3_XXS"] * 8
    assert per_layer(plan("Q5_0", n_gqa=4), D) == ["Q5_1"] + ["Q5_0"] * 7
    # IQ3_XXS's attn_v below 4 query heads per KV head: IQ3_XXS with an imatrix, IQ3_S without
    assert set(per_layer(plan("IQ3_XXS", n_gqa=2), V)) == {"IQ3_XXS"}
    no_im = plan_tensor_types("IQ3_XXS", dense_model(), arch="llama", n_layer=8, n_gqa=2)
    assert set(per_layer(no_im, V)) == {"IQ3_S"}


def test_low_gqa_attn_v():
    # fewer than 4 query heads per KV head: the i-quants keep attn_v at their low type (IQ2_S/IQ2_M: IQ3_S)
    def attn_v(ftype):
        return set(per_layer(plan_tensor_types(ftype, dense_model(), arch="llama", n_layer=8, n_gqa=2), V))

    assert attn_v("IQ2_XS") == {"Q2_K"} and attn_v("IQ1_S") == {"Q2_K"} and attn_v("IQ2_M") == {"IQ3_S"}
    assert attn_v("IQ4_XS") == {"IQ4_XS"} and attn_v("IQ3_S") == {"IQ3_S"} and attn_v("Q2_K_S") == {"Q2_K"}
    assert attn_v("IQ3_M") == {"Q4_K"}  # IQ3_M's rule has no GQA condition


def test_tied_output_of_the_low_bit_files():
    # tied embeddings take the output rule: Q5_K for the 1-3 bit i-quants, Q6_K for the ternary types
    tied = dense_model(tied=True)
    assert plan_tensor_types("IQ2_XXS", tied, arch="gemma2", n_layer=8)["token_embd.weight"] == T.Q5_K
    assert plan_tensor_types("TQ1_0", tied, arch="gemma2", n_layer=8)["token_embd.weight"] == T.Q6_K
    assert plan_tensor_types("MXFP4_MOE", tied, arch="gemma2", n_layer=8)["token_embd.weight"] == T.Q8_0


def test_seventy_b_bump_skips_the_iq2_family():
    big = dense_model(n_layer=80, hidden=256, ffn=512, vocab=512)
    # IQ3_S's GQA attn_v (Q4_K) is bumped to Q5_K; the IQ2 family's Q4_K is not (its branch comes first)
    assert plan_tensor_types("IQ3_S", big, arch="llama", n_layer=80, n_gqa=8)["blk.40.attn_v.weight"] == T.Q5_K
    assert plan_tensor_types("IQ2_XS", big, arch="llama", n_layer=80, n_gqa=8)["blk.40.attn_v.weight"] == T.Q4_K
    assert plan_tensor_types("Q3_K_S", big, arch="llama", n_layer=80, n_gqa=8)["blk.40.attn_v.weight"] == T.Q5_K


def _refusal(ftype, model, importance=None):
    plan = plan_tensor_types(ftype, model, arch="llama", n_layer=8, n_gqa=4, has_imatrix=bool(importance))
    widths = {name: shape[-1] for name, shape in model}
    try:
        validate_imatrix(parse_file_type(ftype), plan, widths, importance)
    except EdgeftError as err:
        return str(err)
    return None


def test_which_types_need_an_imatrix():
    # llama.cpp's tensor_requires_imatrix: IQ3_XXS, IQ2_*, IQ1_* tensors, and Q2_K inside Q2_K_S
    aligned = dense_model()
    refused = [name for name in FILE_TYPES if _refusal(name, aligned)]
    assert refused == ["IQ3_XS", "IQ3_XXS", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S"]
    message = _refusal("IQ2_XS", aligned)
    assert "\n" not in message and "--imatrix auto" in message and "--imatrix FILE" in message
    # odd widths: every would-be i-quant falls back to IQ4_NL/Q4_0, which need none — llama.cpp accepts those too
    assert not any(_refusal(name, dense_model(hidden=160, ffn=384)) for name in FILE_TYPES)


def test_imatrix_of_another_model_is_refused():
    model = dense_model()
    full = {name: np.ones(shape[-1], np.float32) for name, shape in model if name.startswith("blk.") and len(shape) == 2}
    assert _refusal("IQ2_XS", model, full) is None
    # another model's: a layer this one does not have, a row width that differs, a tensor it lacks
    assert "another model" in _refusal("IQ2_XS", model, {**full, "blk.8.attn_q.weight": np.ones(256, np.float32)})
    assert "another model" in _refusal("Q4_K_M", model, {**full, "blk.0.attn_q.weight": np.ones(128, np.float32)})
    missing = _refusal("IQ2_XS", model, {k: v for k, v in full.items() if k != "blk.3.ffn_up.weight"})
    assert "blk.3.ffn_up.weight" in missing and "\n" not in missing
    # a missing entry for a type that does not need one is fine (llama.cpp quantizes it without)
    assert _refusal("IQ4_XS", model, {k: v for k, v in full.items() if k != "blk.3.ffn_up.weight"}) is None
    # token_embd of the wrong width is ignored, as llama.cpp ignores it
    assert _refusal("IQ2_XS", model, {**full, "token_embd.weight": np.ones(7, np.float32)}) is None


@pytest.mark.parametrize("ftype", ["F32", "F16", "BF16"])
def test_float_file_types_keep_1d_in_f32(ftype):
    plan = plan_tensor_types(ftype, dense_model(hidden=160), arch="qwen2", n_layer=8)
    assert plan["blk.0.attn_q.weight"].name == ftype
    assert plan["output.weight"].name == ftype  # no output upgrade for float files
    assert plan["blk.3.attn_norm.weight"] == T.F32 and plan["blk.0.attn_q.bias"] == T.F32


def test_tied_embeddings_take_the_output_rule():
    # no output.weight: token_embd doubles as the output projection, so it gets output's type
    aligned = plan_tensor_types("Q4_K_M", dense_model(tied=True), arch="gemma2", n_layer=8)
    assert aligned["token_embd.weight"] == T.Q6_K
    odd = plan_tensor_types("Q4_K_M", dense_model(hidden=160, tied=True), arch="gemma2", n_layer=8)
    assert odd["token_embd.weight"] == T.Q8_0
    q8 = plan_tensor_types("Q8_0", dense_model(tied=True), arch="gemma2", n_layer=8)
    assert q8["token_embd.weight"] == T.Q8_0
    # untied: token_embd stays the base type
    assert plan_tensor_types("Q4_K_M", dense_model(), arch="llama", n_layer=8)["token_embd.weight"] == T.Q4_K


def test_q2_k_attn_v_depends_on_gqa():
    assert per_layer(plan_tensor_types("Q2_K", dense_model(), arch="llama", n_layer=8, n_gqa=4), "attn_v.weight") == ["Q4_K"] * 8
    assert per_layer(plan_tensor_types("Q2_K", dense_model(), arch="llama", n_layer=8, n_gqa=2), "attn_v.weight") == ["Q3_K"] * 8


def test_q4_0_with_imatrix_guards_first_ffn_down():
    # only with an imatrix: the first n_layer/8 ffn_down become Q4_1
    with_im = plan_tensor_types("Q4_0", dense_model(), arch="llama", n_layer=8, has_imatrix=True)
    assert per_layer(with_im, "ffn_down.weight") == ["Q4_1"] + ["Q4_0"] * 7
    without = plan_tensor_types("Q4_0", dense_model(), arch="llama", n_layer=8)
    assert per_layer(without, "ffn_down.weight") == ["Q4_0"] * 8


def test_fused_qkv_counts_as_attn_v():
    # phi3's attn_qkv is in llama.cpp's attn_v category (its own QKV branch is unreachable), so _M upgrades it
    plan = plan_tensor_types("Q4_K_M", dense_model(fused_qkv=True), arch="phi3", n_layer=8)
    assert per_layer(plan, "attn_qkv.weight") == ["Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q4_K", "Q4_K", "Q6_K", "Q6_K"]


def test_rows_not_a_multiple_of_32_fall_back_to_f16():
    plan = plan_tensor_types("Q4_K_M", dense_model(hidden=72, ffn=512), arch="llama", n_layer=8)
    assert plan["blk.1.attn_q.weight"] == T.F16  # Q4_K -> Q5_0 does not fit 72 either
    assert plan["blk.1.ffn_down.weight"] == T.Q4_K  # its rows are 512 wide
    assert plan_tensor_types("Q8_0", dense_model(hidden=72), arch="llama", n_layer=8)["blk.0.attn_q.weight"] == T.F16


def test_walk_order_is_by_layer_number_not_by_string():
    # 12 layers: llama.cpp sorts blk.10 after blk.9, so layer counters equal layer indices
    plan = plan_tensor_types("Q4_K_M", dense_model(n_layer=12), arch="llama", n_layer=12)
    # n=12: n/8 = 1, 7n/8 = 10 -> layers 0, 3, 6, 9, 10, 11
    assert [i for i in range(12) if plan[f"blk.{i}.attn_v.weight"] == T.Q6_K] == [0, 3, 6, 9, 10, 11]


def test_use_more_bits_for_qwen_sizes():
    # Qwen2.5-0.5B has 24 layers: n/8 = 3, 7n/8 = 21, plus every third from 5
    assert [i for i in range(24) if use_more_bits(i, 24)] == [0, 1, 2, 5, 8, 11, 14, 17, 20, 21, 22, 23]
    assert [i for i in range(2) if use_more_bits(i, 2)] == [1]  # the tiny fixtures


def test_leading_unit_dim_is_1d_to_ggml():
    plan = plan_tensor_types("Q4_K_M", dense_model() + [("blk.0.some_scale.weight", (1, 256))], arch="llama", n_layer=8)
    assert plan["blk.0.some_scale.weight"] == T.F32


def test_source_types_kept_for_unquantizable_tensors():
    plan = plan_tensor_types(
        "Q4_K_M", dense_model(), arch="llama", n_layer=8, source_types={"blk.0.attn_norm.weight": T.F16}
    )
    assert plan["blk.0.attn_norm.weight"] == T.F16


def test_parse_file_type():
    assert parse_file_type("q4_k_m").name == "Q4_K_M"
    assert int(parse_file_type("Q8_0").gguf_file_type) == 7  # llama.cpp LLAMA_FTYPE_MOSTLY_Q8_0
    assert int(parse_file_type("bf16").gguf_file_type) == 32
    # llama-quantize's menu (tools/quantize/quantize.cpp), largest first; not Q1_0/Q2_0 (see README)
    assert list(FILE_TYPES) == ["F32", "F16", "BF16", "Q8_0", "MXFP4_MOE", "Q6_K", "Q5_1", "Q5_K_M", "Q5_K_S", "Q5_0",
                                "Q4_1", "Q4_K_M", "Q4_K_S", "Q4_0", "IQ4_NL", "IQ4_XS", "Q3_K_L", "Q3_K_M", "Q3_K_S",
                                "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "Q2_K", "Q2_K_S", "IQ2_M", "IQ2_S", "IQ2_XS",
                                "IQ2_XXS", "TQ2_0", "IQ1_M", "TQ1_0", "IQ1_S"]
    # llama.cpp's LLAMA_FTYPE_* numbers, written out
    numbers = {"Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "Q3_K_S": 11, "Q3_K_L": 13, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21,
               "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28,
               "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31, "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38}
    assert {name: int(parse_file_type(name).gguf_file_type) for name in numbers} == numbers
    assert parse_file_type("iq4_xs").default_type == T.IQ4_XS and parse_file_type("IQ2_M").default_type == T.IQ2_S
    assert parse_file_type("q4_k").name == "Q4_K_M"  # llama-quantize's alias
    with pytest.raises(EdgeftError) as err:
        parse_file_type("q4_k_xl")
    message = str(err.value)
    assert "\n" not in message and "Q4_K_M" in message and "Q2_K" in message


def test_seventy_b_attn_v_bump():
    # llama.cpp's LLM_TYPE_70B (llama: 80 layers with GQA; qwen2: 80 layers): Q3_K/Q4_K attn_v -> Q5_K
    big = dense_model(n_layer=80, hidden=256, ffn=512, vocab=512)
    llama70 = plan_tensor_types("Q4_K_M", big, arch="llama", n_layer=80, n_gqa=8)
    # Q4_K_M: use_more_bits layers are Q6_K already; the others would be Q4_K and become Q5_K
    assert {llama70[f"blk.{i}.attn_v.weight"].name for i in range(80)} == {"Q6_K", "Q5_K"}
    assert plan_tensor_types("Q3_K_M", big, arch="qwen2", n_layer=80, n_gqa=8)["blk.40.attn_v.weight"] == T.Q5_K
    # 80 layers without GQA is llama's "65B" type: no bump
    assert plan_tensor_types("Q4_K_M", big, arch="llama", n_layer=80, n_gqa=1)["blk.40.attn_v.weight"] == T.Q4_K
