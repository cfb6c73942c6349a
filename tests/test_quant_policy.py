"""The per-tensor type policy equals llama.cpp's (src/llama-quant.cpp), one case per rule.

Expected types are written out by hand from the C rules (not computed by the code under test): an 8-layer model
so the layer-position rules (use_more_bits = layers 0, 3, 6, 7 of 8) show, in a 256-aligned and a non-256 width.
"""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T

from convert.quant import FILE_TYPES, parse_file_type, plan_tensor_types
from convert.quant.policy import use_more_bits
from edgeft.errors import EdgeftError


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
    assert list(FILE_TYPES) == ["F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q4_K_M", "Q4_K_S",
                                "Q4_0", "Q3_K_M", "Q2_K"]
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
