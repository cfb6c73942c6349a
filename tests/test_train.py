"""QLoRA on CPU with a tiny fixture model: 4-bit layers, parameter count, loss falls, outputs, peft reload."""

from __future__ import annotations

import json

import pytest

from edgeft.train.recipe import resolve_recipe
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_data

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def qwen2_base():
    return build_model("qwen2")


@pytest.fixture(scope="module")
def qlora_run(qwen2_base, tmp_path_factory):
    from edgeft.train import train

    folder = tmp_path_factory.mktemp("qlora")
    train_path, eval_path = toy_data(folder)
    out = train(qwen2_base, train_path, folder / "out", eval_path=eval_path, config=dict(TINY_RECIPE),
                max_steps=8, progress=False)
    return out


def _metrics(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _expected_lora_params(base, r, targets=None):
    """Σ r·(d_in + d_out) over the linears LoRA targets, read from the plain (unquantized) model."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    total = 0
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and leaf != "lm_head" and (targets is None or leaf in targets):
            total += r * (module.in_features + module.out_features)
    return total


@pytest.mark.parametrize("targets", [None, ["q_proj", "v_proj"]])
def test_qlora_base_is_4bit_and_trainable_count_is_lora_only(qwen2_base, targets):
    import bitsandbytes as bnb

    from edgeft.train.model import load_tokenizer, load_training_model, parameter_counts

    recipe = resolve_recipe({"r": 4, "target_modules": targets or "all-linear"})
    model = load_training_model(qwen2_base, recipe, load_tokenizer(qwen2_base, recipe))
    four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(four_bit) == 2 * 7  # q k v o gate up down in each of the 2 layers
    assert all(m.weight.quant_type == "nf4" and m.weight.quant_state.nested for m in four_bit)  # double quant
    trainable, total = parameter_counts(model)
    assert trainable == _expected_lora_params(qwen2_base, 4, targets)
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)
    assert trainable < total


def test_qlora_loss_falls_on_a_learnable_task(qlora_run):
    rows = _metrics(qlora_run)
    train_losses = [r["loss"] for r in rows if "loss" in r]
    eval_losses = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(train_losses) == 8 and len(eval_losses) == 4
    assert sum(train_losses[-2:]) / 2 < 0.7 * train_losses[0]
    assert eval_losses[-1] < 0.7 * eval_losses[0]


def test_outputs_are_complete(qlora_run, qwen2_base):
    names = {p.name for p in qlora_run.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "recipe.yaml", "metrics.jsonl", "loss.png",
            "chat_template.jinja", "summary.json", "checkpoints"} <= names
    assert (qlora_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (qlora_run / "chat_template.jinja").read_text() == (qwen2_base / "chat_template.jinja").read_text()
    recipe = resolve_recipe(qlora_run / "recipe.yaml")
    assert (recipe.method, recipe.r, recipe.max_steps, recipe.lr) == ("qlora", 4, 8, 1e-2)
    summary = json.loads((qlora_run / "summary.json").read_text())
    assert summary["trainable_params"] == _expected_lora_params(qwen2_base, 4)
    assert summary["tokens_per_s"] > 0 and summary["peak_memory_mb"] > 0 and summary["steps"] == 8
    assert not any(p.name.startswith(".") for p in qlora_run.iterdir())  # no temporary leftovers


def test_adapter_loads_with_peft_and_changes_the_model(qlora_run, qwen2_base):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(qwen2_base), dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = PeftModel.from_pretrained(base, str(qlora_run))
    saved = load_file(str(qlora_run / "adapter_model.safetensors"))
    assert saved and all("lora_A" in k or "lora_B" in k for k in saved)
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    for key, tensor in saved.items():
        match = [v for k, v in loaded.items() if k.replace(".default", "") == key]
        assert len(match) == 1 and torch.equal(match[0], tensor)
    with torch.no_grad():
        after = model(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def test_best_checkpoint_is_kept(qlora_run):
    state = json.loads((qlora_run / "checkpoints" / "best" / "state.json").read_text())
    rows = _metrics(qlora_run)
    best = min((r for r in rows if "eval_loss" in r), key=lambda r: r["eval_loss"])
    assert state["step"] == best["step"]
    summary = json.loads((qlora_run / "summary.json").read_text())
    assert summary["best_step"] == best["step"]


def test_dora_and_rslora_are_selectable(qwen2_base):
    from edgeft.train.model import load_tokenizer, load_training_model, parameter_counts

    recipe = resolve_recipe({"r": 4, "dora": True, "rslora": True, "target_modules": ["q_proj", "v_proj"]})
    model = load_training_model(qwen2_base, recipe, load_tokenizer(qwen2_base, recipe))
    config = model.peft_config["default"]
    assert config.use_dora and config.use_rslora and config.lora_alpha == 8
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / 4 ** 0.5)  # rsLoRA: alpha / sqrt(r)
    # DoRA adds one magnitude per output feature of each targeted linear.
    lora_only = _expected_lora_params(qwen2_base, 4, ["q_proj", "v_proj"])
    magnitudes = sum(m.out_features for name, m in model.named_modules()
                     if name.endswith(("q_proj.base_layer", "v_proj.base_layer")))
    assert parameter_counts(model)[0] == lora_only + magnitudes
