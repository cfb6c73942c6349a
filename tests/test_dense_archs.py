"""The dense architectures with their own quirks (SmolLM3, Granite, OLMo 2, Gemma 3, Phi-4-mini) beyond conversion parity: `edgeft train` gives an adapter for each (LoRA and QLoRA),
and the variants llama.cpp cannot run are refused in one line naming the config field."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.factory import build_model, edited_model
from tests.hostile import invoke, one_line_error
from tests.train_helpers import TINY_RECIPE, checked_adapter, toy_data

ARCHS = ("smollm3", "granite", "olmo2", "gemma3", "phi4mini")


# QLoRA on two of them (Gemma 3's q/k norms and GELU MLP, Phi-4-mini's fused qkv/gate_up): the 4-bit path is shared.
@pytest.mark.parametrize("arch, method", [*((arch, "lora") for arch in ARCHS), ("gemma3", "qlora"),
                                          ("phi4mini", "qlora")])
def test_train_produces_an_adapter(arch, method, tmp_path):
    pytest.importorskip("torch")
    from edgeft.train import train

    train_path, _ = toy_data(tmp_path / "data", n_train=4)
    out = train(build_model(arch), train_path, tmp_path / "out", config={**TINY_RECIPE, "method": method},
                max_steps=2, progress=False)
    config, names = checked_adapter(out, steps=2)
    # Every linear of every layer carries a pair (attention and MLP), for both layers at least.
    projections = {n.split(".")[-3] for n in names if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"} <= projections or "qkv_proj" in projections, names
    assert config["r"] == TINY_RECIPE["r"]


@pytest.mark.parametrize("arch, changes, needles", [
    ("smollm3", {"no_rope_layers": [1, 0, 1, 1]}, ["no_rope_layers=[1, 0, 1, 1]", "every 4th layer"]),
    ("smollm3", {"use_sliding_window": True}, ["use_sliding_window"]),
    ("gemma3", {"vision_config": {"model_type": "siglip_vision_model"}}, ["vision_config", "text only"]),
    ("gemma3", {"architectures": ["Gemma3ForConditionalGeneration"]}, ["architectures", "text only"]),
    ("gemma3", {"attn_logit_softcapping": 50.0}, ["attn_logit_softcapping"]),
    ("gemma3", {"query_pre_attn_scalar": 32}, ["query_pre_attn_scalar=32"]),
    ("olmo2", {"tie_word_embeddings": True}, ["tie_word_embeddings"]),
], ids=["smollm3-nope", "smollm3-swa", "gemma3-vision", "gemma3-multimodal-class", "gemma3-softcap",
        "gemma3-scalar", "olmo2-tied"])
def test_unsupported_variant_is_one_line(arch, changes, needles, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(invoke("convert", edited_model(arch, tmp_path, **changes), "-o", out / "m.gguf"), "config.json",
                   *needles)
    assert not list(out.iterdir())


def _gemma3_tokens() -> int:
    return json.loads((build_model("gemma3") / "config.json").read_text())["vocab_size"]


def test_gemma3_embedding_rows_past_the_tokenizer_are_cut(tmp_path):
    """Gemma 3 pads its embedding past the tokenizer: the GGUF keeps one row per token (llama.cpp's gemma3 rule) and
    still runs like transformers on every real token."""
    pytest.importorskip("llama_cpp")
    import numpy as np
    from gguf import GGUFReader

    from convert import convert_model
    from tests.convert_helpers import PROMPT, hf_logits, hf_tokenizer, llama_logits

    n_tokens = _gemma3_tokens()
    model_dir = build_model("gemma3", vocab_size=n_tokens + 8)
    gguf_path = convert_model(model_dir, tmp_path / "g.gguf", outtype="f32")
    reader = GGUFReader(gguf_path)
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert [int(x) for x in embd.shape] == [64, n_tokens]
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == n_tokens
    ids = hf_tokenizer(model_dir)(PROMPT)["input_ids"]
    expected = hf_logits(model_dir, ids, ggml_gelu=True)[:, :n_tokens]
    got = llama_logits(gguf_path, ids)
    print(f"gemma3 embedding cut {n_tokens + 8} -> {n_tokens} rows: max|Δlogit| = {np.abs(got - expected).max():.2e}")
    assert np.abs(got - expected).max() <= 1e-3 and (got.argmax(-1) == expected.argmax(-1)).all()


def test_gemma3_added_token_past_the_embedding_is_left_out(tmp_path):
    """Gemma 3 1B's tokenizer has <image_soft_token> one past its 262144 embedding rows: left out with a warning
    (as llama.cpp's converter does), and text still tokenizes like transformers."""
    pytest.importorskip("llama_cpp")
    from convert import convert_model
    from tests.convert_helpers import PROMPT, hf_tokenizer, open_llama

    model = tmp_path / "model"
    shutil.copytree(build_model("gemma3"), model)
    n_tokens = _gemma3_tokens()
    entry = {"id": n_tokens, "content": "<image_soft_token>", "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
    tokenizer_json = json.loads((model / "tokenizer.json").read_text())
    tokenizer_json["added_tokens"].append(entry)
    (model / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.setdefault("added_tokens_decoder", {})[str(n_tokens)] = {k: v for k, v in entry.items() if k != "id"}
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="image_soft_token"):
        gguf_path = convert_model(model, tmp_path / "g.gguf", outtype="f32")
    llm = open_llama(gguf_path, vocab_only=True)
    assert llm.n_vocab() == n_tokens
    assert llm.tokenize(PROMPT.encode(), add_bos=True, special=True) == hf_tokenizer(model)(PROMPT)["input_ids"]
    llm.close()
