"""edgeft/merge_plan.py: the plan refuses an adapter that does not fit the base, before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from convert.common.errors import EdgeftError  # noqa: E402
from edgeft.merge import merge_adapter  # noqa: E402
from tests.factory import build_model  # noqa: E402
from tests.test_merge import _leftovers, make_adapter, save_grown_tokenizer  # noqa: E402

def test_adapter_for_another_base_names_first_tensor(tmp_path):
    other = build_model("llama", aligned=True)
    adapter, _, _ = make_adapter(other, tmp_path / "adapter", target_modules=["q_proj", "v_proj"])
    with pytest.raises(EdgeftError) as info:
        merge_adapter(build_model("llama"), adapter, tmp_path / "merged")
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj.weight" in message and "\n" not in message
    assert not (tmp_path / "merged").exists() and not _leftovers(tmp_path)


def test_refuses_a_quantized_base(tmp_path):
    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    quantized = tmp_path / "base-4bit"
    shutil.copytree(base, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(EdgeftError, match="bitsandbytes checkpoint; merge high"):
        merge_adapter(quantized, adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_token_rows_beyond_the_adapter_tokenizer_are_another_base(tmp_path):
    """Rows past the base's vocabulary are grown only up to the adapter tokenizer's length, so an index past that
    too is still refused as an adapter for another base."""
    base = build_model("llama")
    vocab = json.loads((base / "config.json").read_text())["vocab_size"]
    new_ids = [vocab, vocab + 1, vocab + 2]
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", resize_vocab=vocab + 3, target_modules=["q_proj"],
                                 trainable_token_indices={"embed_tokens": new_ids, "lm_head": new_ids},
                                 save_embedding_layers=False)
    for added, tokenizer_words in ((None, ""), (2, f" and the adapter tokenizer's {vocab + 2} tokens")):
        if added:
            save_grown_tokenizer(base, adapter, added)
        with pytest.raises(EdgeftError) as refused:
            merge_adapter(base, adapter, tmp_path / "merged")
        message = str(refused.value)
        assert "\n" not in message
        assert message.startswith(f"{adapter}: trainable token index {vocab + 2} is beyond lm_head.weight's "
                                  f"{vocab} rows{tokenizer_words}; this adapter was trained on another base")
        assert not (tmp_path / "merged").exists() and not _leftovers(tmp_path)
