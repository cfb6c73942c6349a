"""The fused LoRA forward edgeft trains with gives peft's own forward's loss and LoRA gradients (fp32), for LoRA and
QLoRA, with and without dropout, and hands every other case (DoRA, adapters off) to peft."""

from __future__ import annotations

import pytest

from edgeft.train.packing import IGNORE
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE

torch = pytest.importorskip("torch")


def _training_model(**settings):
    from edgeft.train.model import load_tokenizer, load_training_model
    from edgeft.train.recipe import resolve_recipe

    recipe = resolve_recipe(dict(TINY_RECIPE, **settings))
    base = build_model("llama")
    model = load_training_model(base, recipe, load_tokenizer(base, recipe))
    torch.manual_seed(1)
    with torch.no_grad():  # B starts at zero, which would leave every A gradient zero: nothing to compare
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model


def _batch(vocab: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, vocab, (3, 24), generator=generator)
    targets = input_ids.clone()
    targets[:, :10] = IGNORE
    return {"input_ids": input_ids, "targets": targets, "attention_mask": torch.ones_like(input_ids)}


def _loss_and_grads(model, batch):
    from edgeft.train.forward import token_loss_sum

    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the same dropout masks on both sides
    loss = token_loss_sum(model, batch)
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _fused_layers(model) -> list:
    from edgeft.train.lora_forward import lora_linear_classes

    return [m for m in model.modules() if isinstance(m, lora_linear_classes()) and "forward" in vars(m)]


@pytest.mark.parametrize("settings", [{"method": "lora", "dropout": 0.0}, {"method": "lora", "dropout": 0.1},
                                      {"method": "lora", "dropout": 0.0, "rslora": True},
                                      {"method": "qlora", "dropout": 0.1}])
def test_fused_forward_gives_peft_loss_and_gradients(settings):
    from peft import get_peft_model_state_dict

    if settings["method"] == "qlora":
        pytest.importorskip("bitsandbytes")
    model = _training_model(**settings)
    model.train()
    layers = _fused_layers(model)
    assert len(layers) == 7 * model.config.num_hidden_layers  # every linear of each block (all-linear)
    saved = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    batch = _batch(model.config.vocab_size)
    fused_loss, fused_grads = _loss_and_grads(model, batch)
    for layer in layers:
        del layer.forward  # back to peft's own forward
    peft_loss, peft_grads = _loss_and_grads(model, batch)
    assert fused_loss == pytest.approx(peft_loss, rel=1e-5)
    assert any(float(g.abs().max()) > 0 for n, g in peft_grads.items() if "lora_A" in n)
    for name, grad in peft_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-5, atol=1e-5 * float(grad.abs().max()) + 1e-8)
    after = get_peft_model_state_dict(model)
    assert after.keys() == saved.keys() and all(torch.equal(after[k], saved[k]) for k in saved)


def test_cases_the_fused_forward_does_not_compute_go_to_peft():
    from edgeft.train.forward import token_loss_sum
    from edgeft.train.lora_forward import _plain_adapter

    dora = _training_model(method="lora", dora=True)
    layer = _fused_layers(dora)[0]
    x = torch.zeros(1, 2, layer.in_features)
    assert _plain_adapter(layer, x, (), {}) is None
    model = _training_model(method="lora")
    layer = _fused_layers(model)[0]
    assert _plain_adapter(layer, x, (), {}) == "default"
    assert _plain_adapter(layer, x.double(), (), {}) is None
    assert _plain_adapter(layer, x, (), {"adapter_names": ["default"]}) is None
    batch = _batch(model.config.vocab_size)
    with model.disable_adapter(), torch.no_grad():  # the base alone: the LoRA (B is not zero) would change it
        assert _plain_adapter(layer, x, (), {}) is None
        off_loss = float(token_loss_sum(model, batch))
    with torch.no_grad():
        on_loss = float(token_loss_sum(model, batch))
    for module in _fused_layers(model):
        del module.forward
    with model.disable_adapter(), torch.no_grad():
        assert off_loss == pytest.approx(float(token_loss_sum(model, batch)), rel=1e-6)
    assert off_loss != pytest.approx(on_loss, rel=1e-6)
