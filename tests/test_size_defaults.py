"""Defaults that fit the base: lr and effective batch by parameter count, recorded in the resolved recipe."""

from __future__ import annotations

import math

import pytest

from edgeft.train.recipe import resolve_recipe
from edgeft.train.size import apply_size_defaults, parameter_count, size_batch, size_lr
from tests.factory import build_model


@pytest.mark.parametrize("parameters, lr, batch", [
    (135e6, 1e-3, 16),    # the demo's base, where 1e-3 was measured to work and 1e-4 not to
    (360e6, 6.1e-4, 16),
    (1.7e9, 2.8e-4, 32),
    (7e9, 1.4e-4, 32),
    (70e9, 1e-4, 32),     # the floor: the seed's default
    (4e6, 2e-3, 16),      # the ceiling: tiny test bases
])
def test_the_rule(parameters, lr, batch):
    assert size_lr(parameters) == pytest.approx(lr) and size_batch(parameters) == batch


def test_left_out_settings_follow_the_base_and_set_ones_win():
    base = build_model("qwen2")
    parameters = parameter_count(base)
    from safetensors import safe_open

    with safe_open(str(base / "model.safetensors"), "np") as weights:
        assert parameters == sum(math.prod(weights.get_slice(n).get_shape()) for n in weights.keys())
    recipe, note = apply_size_defaults(resolve_recipe({}), base)
    assert (recipe.lr, recipe.effective_batch) == (size_lr(parameters), size_batch(parameters))
    assert note == f"lr {recipe.lr}, effective_batch {recipe.effective_batch}: by the base's size, " \
                   f"{parameters:,} parameters (edgeft/train/size.py)"
    recipe, note = apply_size_defaults(resolve_recipe({"lr": "auto", "effective_batch": 8}), base)
    assert (recipe.lr, recipe.effective_batch) == (size_lr(parameters), 8) and note.startswith("lr ")
    recipe, note = apply_size_defaults(resolve_recipe({"lr": 5e-5, "effective_batch": 8}), base)
    assert (recipe.lr, recipe.effective_batch, note) == (5e-5, 8, None)


def test_the_resolved_recipe_records_the_choice(tmp_path):
    import yaml

    from edgeft.train import train
    from tests.train_helpers import TINY_RECIPE, toy_data

    train_path, _ = toy_data(tmp_path / "data", n_train=8)
    config = {k: v for k, v in TINY_RECIPE.items() if k not in ("lr", "effective_batch")}
    out = train(build_model("qwen2"), train_path, tmp_path / "out", progress=False,
                config=dict(config, method="lora", max_steps=1))
    text = (out / "recipe.yaml").read_text()
    saved = yaml.safe_load(text)
    parameters = parameter_count(build_model("qwen2"))
    assert (saved["lr"], saved["effective_batch"]) == (size_lr(parameters), size_batch(parameters))
    assert f"# defaults: lr {saved['lr']}, effective_batch 16: by the base's size, {parameters:,} parameters" in text
