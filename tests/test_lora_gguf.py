"""edgeft convert-lora: llama.cpp running base GGUF + adapter GGUF equals llama.cpp running the merged GGUF.

Both sides are F32 GGUFs evaluated by llama-cpp-python on the same prompt, with an F32 KV cache: with the default
F16 cache, the two routes' last-bit differences in K/V get rounded differently and reach ~1e-3 in the logits,
which would hide a real layout bug in noise.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")
llama_cpp = pytest.importorskip("llama_cpp")

from click.testing import CliRunner  # noqa: E402

from convert import convert_model  # noqa: E402
from convert.lora import convert_lora, describe  # noqa: E402
from convert.common.errors import EdgeftError  # noqa: E402
from edgeft.merge import merge_adapter  # noqa: E402
from tests.factory import ARCHS, MOE_ARCHS, build_model  # noqa: E402
from tests.hostile import invoke, one_line_error  # noqa: E402
from tests.test_merge import PROMPT_IDS, default_targets, make_adapter  # noqa: E402

GGML_TYPE_F32 = 0


def gguf_logits(model_path, lora_path=None) -> np.ndarray:
    kwargs = {"lora_path": str(lora_path)} if lora_path else {}
    llm = llama_cpp.Llama(model_path=str(model_path), n_ctx=128, logits_all=True, verbose=False, seed=0,
                          n_threads=2, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, **kwargs)
    try:
        llm.eval(PROMPT_IDS)
        return np.array(llm.scores[: len(PROMPT_IDS)], dtype=np.float32)
    finally:
        llm.close()


def adapter_vs_merged(base, adapter, tmp_path, outtype="f32"):
    base_gguf = convert_model(base, tmp_path / "base.gguf", outtype="f32")
    merged_gguf = convert_model(merge_adapter(base, adapter, tmp_path / "merged", nf4_report=False),
                                tmp_path / "merged.gguf", outtype="f32")
    adapter_gguf = convert_lora(adapter, tmp_path / "adapter.gguf", base_dir=base, outtype=outtype)
    with_adapter = gguf_logits(base_gguf, adapter_gguf)
    merged = gguf_logits(merged_gguf)
    plain = gguf_logits(base_gguf)
    assert np.abs(plain - merged).max() > 0.1, "the adapter does not move the logits; the test would prove nothing"
    return with_adapter, merged


@pytest.mark.parametrize("arch", ARCHS)
def test_adapter_gguf_matches_merged_gguf(arch, tmp_path):
    base = build_model(arch)
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", **default_targets(arch))
    with_adapter, merged = adapter_vs_merged(base, adapter, tmp_path)
    if arch in MOE_ARCHS:  # the router's LoRA travels too (llama.cpp applies it in build_moe_ffn's gate matmul)
        assert "blk.0.ffn_gate_inp.weight.lora_b" in describe(tmp_path / "adapter.gguf")["tensors"]
    assert (with_adapter.argmax(-1) == merged.argmax(-1)).all()
    assert np.abs(with_adapter - merged).max() <= 1e-3


@pytest.mark.parametrize("variant", [
    dict(use_rslora=True, r=4),  # alpha in the file becomes alpha*sqrt(r)
    dict(rank_pattern={"down_proj": 4}, alpha_pattern={"layers.1.self_attn.q_proj": 3}),  # folded into lora_b
    dict(target_modules=["q_proj", "embed_tokens", "lm_head"]),  # embedding layout (lora_a transposed)
], ids=["rslora", "patterns", "embedding"])
def test_scales_and_embedding_layout(variant, tmp_path):
    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", **variant)
    with_adapter, merged = adapter_vs_merged(base, adapter, tmp_path)
    assert (with_adapter.argmax(-1) == merged.argmax(-1)).all()
    assert np.abs(with_adapter - merged).max() <= 1e-3


def test_metadata_and_tensor_names(tmp_path):
    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", use_rslora=True, r=4, lora_alpha=8,
                                 target_modules=["q_proj", "k_proj"])
    info = describe(convert_lora(adapter, tmp_path / "a.gguf", base_dir=base))
    assert info["general.type"] == "adapter" and info["adapter.type"] == "lora"
    assert info["general.architecture"] == "llama"
    assert info["adapter.lora.alpha"] == pytest.approx(8 * 2.0)  # llama.cpp divides by r; rsLoRA wants sqrt(r)
    assert sorted(info["tensors"]) == sorted(f"blk.{i}.attn_{p}.weight.lora_{ab}"
                                             for i in range(2) for p in "qk" for ab in "ab")
    # ggml order: lora_a is (in, r), lora_b is (r, out); k has n_kv_head*head_dim = 32 rows
    assert info["tensors"]["blk.0.attn_k.weight.lora_a"] == ["F32", [64, 4]]
    assert info["tensors"]["blk.0.attn_k.weight.lora_b"] == ["F32", [4, 32]]


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_smaller_outtypes_load_and_stay_close(outtype, tmp_path):
    base = build_model("qwen2")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", r=32, lora_alpha=32)
    with_adapter, merged = adapter_vs_merged(base, adapter, tmp_path, outtype=outtype)
    types = {kind for kind, _ in describe(tmp_path / "adapter.gguf")["tensors"].values()}
    assert types == ({"F16"} if outtype == "f16" else {"Q8_0"})
    assert (with_adapter.argmax(-1) == merged.argmax(-1)).mean() >= 0.9
    # measured: f16 0.003, q8_0 0.08 (these random factors are far larger than trained ones)
    assert np.abs(with_adapter - merged).max() <= {"f16": 0.02, "q8_0": 0.25}[outtype]


def test_cli_convert_lora(tmp_path):
    from edgeft.cli import main

    base = build_model("qwen3")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["v_proj"])
    result = CliRunner().invoke(main, ["convert-lora", str(adapter), "-o", str(tmp_path / "a.gguf"),
                                       "--base", str(base), "--outtype", "F16"])
    assert result.exit_code == 0, result.output
    assert describe(tmp_path / "a.gguf")["general.architecture"] == "qwen3"


# ---- refusals -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant, reason", [
    (dict(use_dora=True, target_modules=["q_proj"]), "DoRA"),
    (dict(target_modules=["q_proj"], modules_to_save=["lm_head"]), "replaces the whole tensor lm_head.weight"),
])
def test_refuses_what_llama_cpp_cannot_express(variant, reason, tmp_path):
    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", **variant)
    with pytest.raises(EdgeftError, match=reason):
        convert_lora(adapter, tmp_path / "a.gguf", base_dir=base)
    assert list(tmp_path.glob("*.gguf*")) == [] and list(tmp_path.glob(".a.gguf*")) == []


def test_shape_mismatch_names_first_tensor(tmp_path):
    other = build_model("llama", aligned=True)
    adapter, _, _ = make_adapter(other, tmp_path / "adapter", target_modules=["k_proj", "o_proj"])
    with pytest.raises(EdgeftError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight"):
        convert_lora(adapter, tmp_path / "a.gguf", base_dir=build_model("llama"))
    assert not (tmp_path / "a.gguf").exists()


def test_needs_a_local_base(tmp_path):
    import json

    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/some-model"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeftError, match="pass --base"):
        convert_lora(adapter, tmp_path / "a.gguf")


def test_cli_error_is_one_line(tmp_path):
    from edgeft.cli import main

    (tmp_path / "adapter").mkdir()
    result = CliRunner().invoke(main, ["convert-lora", str(tmp_path / "adapter"), "-o", str(tmp_path / "a.gguf")])
    assert result.exit_code == 1
    assert "no adapter_config.json" in result.output and result.output.strip().count("\n") == 0
    assert not (tmp_path / "a.gguf").exists()


# ---- hostile input -------------------------------------------------------------------------------------------------

# adapter_config.json edits and what the one line says: each was a traceback (AttributeError, ValueError, TypeError).
BAD_ADAPTER_CONFIGS = [
    ("[1]", "is a JSON list, not an object of peft settings"),
    ({"lora_alpha": "lots"}, 'lora_alpha is "lots", not an integer or a number'),
    ({"alpha_pattern": [1]}, "alpha_pattern is [1], not an object"),
    ({"target_parameters": 5}, "target_parameters is 5, not a list"),
    ({"r": True}, "r is true, not an integer"),
    # nonsense values converted: the rank is taken from the tensors, a negative alpha only flips the delta
    ({"r": 0}, "r is 0, not a rank of 1 or more"),
    ({"r": -8}, "r is -8, not a rank of 1 or more"),
    ({"lora_alpha": 0}, "lora_alpha is 0, not a finite number above 0"),
    ({"lora_alpha": -16}, "lora_alpha is -16, not a finite number above 0"),
    ({"lora_alpha": float("nan")}, "lora_alpha is NaN, not a finite number above 0"),
    ({"lora_alpha": float("inf")}, "lora_alpha is Infinity, not a finite number above 0"),
    ({"alpha_pattern": {"q_proj": -1}}, 'alpha_pattern["q_proj"] is -1, not a finite number above 0'),
    ({"alpha_pattern": {"q_proj": "big"}}, 'alpha_pattern["q_proj"] is "big", not an integer or a number'),
    ({"rank_pattern": {"q_proj": 0}}, 'rank_pattern["q_proj"] is 0, not a rank of 1 or more'),
    ({"rank_pattern": {"(q_proj": 8}}, 'rank_pattern key "(q_proj" is not a regular expression'),
    ({"alpha_pattern": {"[": 16}}, 'alpha_pattern key "[" is not a regular expression'),
]


# config r vs the tensors' rank (8): a disagreement rank_pattern does not explain is refused, one it does converts.
RANK_CONFIGS = [
    ({"r": 4}, "adapter_model.safetensors: ",
     ("has rank 8 (lora_A rows) but adapter_config.json gives r 4", "not the same adapter's")),
    ({"rank_pattern": {"q_proj": 4}}, "adapter_model.safetensors: ",
     ("has rank 8 (lora_A rows) but adapter_config.json gives its rank_pattern entry 4", "not the same adapter's")),
    ({"r": 4, "rank_pattern": {".*": 8}}, None, None),
]


@pytest.mark.hostile
@pytest.mark.parametrize("change, where, needles", [(change, "adapter_config.json: ", (needle,))
                                                    for change, needle in BAD_ADAPTER_CONFIGS] + RANK_CONFIGS)
def test_convert_lora_checks_adapter_config(tmp_path, change, where, needles):
    pytest.importorskip("peft")
    from tests.test_merge import make_adapter

    model = build_model("llama")
    adapter, _, _ = make_adapter(model, tmp_path / "adapter")
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(change if isinstance(change, str) else json.dumps({**config, **change}))
    out = tmp_path / "adapter.gguf"
    result = invoke("convert-lora", adapter, "-o", out, "--base", model)
    if needles is None:
        assert result.exit_code == 0, result.output
        assert out.exists()
    else:
        one_line_error(result, where, *needles)
        assert not out.exists()
