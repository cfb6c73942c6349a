"""A base with no chat template trains with ChatML: tokens added, embeddings resized, new rows trained and saved."""

from __future__ import annotations

import json
import shutil

import pytest

from edgeft.train.recipe import resolve_recipe
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_data

torch = pytest.importorskip("torch")

CHATML = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def templateless_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("nochat") / "base"
    shutil.copytree(build_model("llama"), base)  # untied lm_head: its new rows must be trained too
    (base / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    return base


def _initial_token_rows(base, recipe):
    """The new rows as training starts, rebuilt with the same seeding order as edgeft.train."""
    from edgeft.train import _seed_everything
    from edgeft.train.model import load_tokenizer, load_training_model

    _seed_everything(recipe.seed)
    model = load_training_model(base, recipe, load_tokenizer(base, recipe))
    return {name: p.detach().clone() for name, p in model.named_parameters() if "trainable_tokens" in name}


def test_chatml_tokens_added_and_trained(templateless_base, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.data.templates import CHATML_TEMPLATE
    from edgeft.train import train

    train_path, _ = toy_data(tmp_path)
    settings = dict(TINY_RECIPE, method="lora")
    out = train(templateless_base, train_path, tmp_path / "out", config=settings, max_steps=3, progress=False)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["added_tokens"] == CHATML
    assert (out / "chat_template.jinja").read_text() == CHATML_TEMPLATE
    base_vocab = len(AutoTokenizer.from_pretrained(str(templateless_base)))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    new_ids = tokenizer.convert_tokens_to_ids(CHATML)
    assert new_ids == [base_vocab, base_vocab + 1]
    assert tokenizer("<|im_start|>user", add_special_tokens=False)["input_ids"][0] == new_ids[0]

    saved = load_file(str(out / "adapter_model.safetensors"))
    rows = {k: v for k, v in saved.items() if "trainable_tokens" in k}
    assert sorted(k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in rows) == ["embed_tokens", "lm_head"]
    assert all(v.shape == (2, 64) for v in rows.values())

    recipe = resolve_recipe(settings, max_steps=3)
    initial = _initial_token_rows(templateless_base, recipe)
    assert initial.keys() and all(torch.equal(v, w) for v, w in zip(
        initial.values(), _initial_token_rows(templateless_base, recipe).values()))  # init is reproducible
    trained = dict(zip(sorted(rows), [rows[k] for k in sorted(rows)]))
    for (name, before), after in zip(sorted(initial.items()), trained.values()):
        assert not torch.allclose(before, after), f"{name}: new rows were not trained"

    # Loading for inference: resize the base to the adapter's tokenizer, then peft restores the trained rows.
    model = AutoModelForCausalLM.from_pretrained(str(templateless_base), dtype=torch.float32)
    model.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(model, str(out)).merge_and_unload()
    embed_rows = model.get_input_embeddings().weight[new_ids]
    assert any(torch.allclose(embed_rows, v) for v in rows.values())


def test_added_tokens_never_shrink_a_padded_vocabulary(templateless_base, tmp_path):
    """A base with spare rows (config vocab_size above the tokenizer's length) keeps every row: the ChatML tokens
    land in spare rows, and nothing the merged model can emit was cut away in training."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeft.train.model import load_tokenizer, load_training_model

    padded = tmp_path / "padded"
    shutil.copytree(templateless_base, padded)
    rows = len(AutoTokenizer.from_pretrained(str(padded))) + 5
    model = AutoModelForCausalLM.from_pretrained(str(padded), dtype=torch.float32)
    model.resize_token_embeddings(rows)
    model.save_pretrained(str(padded))
    recipe = resolve_recipe(dict(TINY_RECIPE, method="lora"), max_steps=1)
    tok = load_tokenizer(padded, recipe)
    trained = load_training_model(padded, recipe, tok)
    assert trained.get_input_embeddings().weight.shape[0] == rows
    assert trained.get_output_embeddings().weight.shape[0] == rows
    assert max(tok.tokenizer.convert_tokens_to_ids(CHATML)) < rows
