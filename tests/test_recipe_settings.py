"""Every numeric training setting is checked for finiteness and range where it is read, by the recipe's one table
(edgeft.train.recipe.SETTINGS): a recipe YAML, the command line and a release recipe's train: section all go through
it. NaN passes every `<= 0` test, so the table checks finiteness first. And a step trains exactly effective_batch
sequences, or the recipe is refused."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from convert.common.errors import EdgeftError
from edgeft.release.settings import check_release_recipe
from edgeft.train.recipe import SETTINGS, Recipe, resolve_recipe
from tests.factory import build_model
from tests.hostile import invoke, one_line_error
from tests.train_helpers import toy_data, write_recipe

# (setting, value, what the line says): every float setting non-finite, and each range's edge from outside.
BAD_VALUES = [
    ("lr", float("inf"), "not a finite number"), ("lr", float("nan"), "not a finite number"),
    ("lr", 0.0, "must be a number > 0"), ("lr", -1e-4, "must be a number > 0"), ("lr", "fast", "or auto"),
    ("alpha", float("nan"), "not a finite number"), ("alpha", 0, "must be a number > 0"),
    ("dropout", float("nan"), "not a finite number"), ("dropout", 1.0, "in [0, 1)"),
    ("weight_decay", -1, "0 or more"), ("weight_decay", float("inf"), "not a finite number"),
    ("warmup_ratio", float("-inf"), "not a finite number"), ("warmup_ratio", 1, "in [0, 1)"),
    ("epochs", float("nan"), "not a finite number"), ("epochs", 0, "must be a number > 0"), ("epochs", 1e300, "at most 10000"),
    ("max_grad_norm", -1, "> 0 (null: no clipping)"), ("max_grad_norm", float("nan"), "not a finite number"),
    ("max_steps", 0, "1 or more"), ("max_steps", 2.5, "an integer"), ("r", True, "an integer"),
    ("seed", -1, "[0, 2**63)"), ("seed", 2**64, "[0, 2**63)"), ("micro_batch", 0, "1 or more"),
    ("early_stop", 0, "1 or more"), ("keep", "worst", "is not one of best, last"),
    ("rslora", "yes", "must be true or false"), ("effective_batch", 0, "1 or more, or auto"),
    ("validation", float("nan"), "not a finite number"), ("validation", 0.7, "in (0, 0.5]"),
    ("validation", True, "a fraction of the training data"), ("select", "best", "is not one of loss, metric"),
    ("target_modules", [], "'all-linear' or a list"), ("chat_template", "  ", "a path to a .jinja file"),
]


def test_every_recipe_field_has_a_rule():
    assert set(SETTINGS) == {field.name for field in dataclasses.fields(Recipe)}


@pytest.mark.parametrize("key, value, needle", BAD_VALUES)
def test_a_bad_value_is_refused_from_yaml_and_the_release_recipe(tmp_path, key, value, needle):
    config = tmp_path / "recipe.yaml"
    config.write_text(yaml.safe_dump({key: value}))  # .nan / .inf in YAML, as a user writes them
    with pytest.raises(EdgeftError) as info:
        resolve_recipe(config)
    assert f"{config}: {key}=" in str(info.value) and needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(EdgeftError) as info:
        check_release_recipe({"name": "x", "train": {key: value}}, "release.yaml")
    assert str(info.value).startswith(f"release.yaml: train: {key}=") and needle in str(info.value)


@pytest.mark.parametrize("args, needle", [
    (["--lr", "inf"], "command line: lr=inf is not a finite number"),
    (["--lr", "nan"], "command line: lr=nan is not a finite number"),
    (["--epochs", "nan"], "command line: epochs=nan is not a finite number"),
    (["--epochs", "-1"], "epochs=-1.0 must be a number > 0"),
    (["--seed", "-5"], "seed=-5 must be an integer in [0, 2**63)"),
    (["--validation", "nan"], "validation=nan is not a finite number"),
])
def test_a_bad_value_on_the_command_line_is_one_line_before_any_model_loads(tmp_path, no_model_load, args, needle):
    data, _ = toy_data(tmp_path)
    one_line_error(invoke("train", "--base", build_model("qwen2"), "--data", data, "-o", tmp_path / "out", *args),
                   needle)
    assert not (tmp_path / "out").exists()


def test_values_that_mean_something_are_kept():
    recipe = resolve_recipe({"epochs": 1.5, "lr": "1e-4", "max_steps": 4.0, "alpha": None, "max_grad_norm": None,
                             "effective_batch": "auto", "validation": "val.jsonl"})
    # 1e-4 without a dot is a string to YAML 1.1; it is the number the user wrote
    assert (recipe.epochs, recipe.lr, recipe.max_steps, recipe.alpha, recipe.max_grad_norm) == (1.5, 1e-4, 4, None,
                                                                                               None)
    assert (recipe.effective_batch, recipe.validation) == (None, "val.jsonl")
    assert resolve_recipe({"validation": 0.1, "lr": "AUTO"}).validation == 0.1


def test_a_fractional_epoch_trains_that_part_of_an_epoch(tmp_path):
    """`--epochs 1.5` (documented: epochs is a number) runs one and a half passes and records 1.5."""
    pytest.importorskip("torch")
    from edgeft.train import train

    data, _ = toy_data(tmp_path, n_train=16)  # 4 sequences a step: 4 steps an epoch
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora", save_every=100)
    out = train(build_model("qwen2"), data, tmp_path / "out", config=recipe, epochs=1.5, progress=False)
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["steps"] == summary["planned_steps"] == 6
    assert yaml.safe_load((out / "recipe.yaml").read_text())["epochs"] == 1.5


@pytest.mark.parametrize("settings", [{"effective_batch": 5, "micro_batch": 2}, {"effective_batch": 3,
                                                                                  "micro_batch": 4}])
def test_a_step_that_would_not_be_effective_batch_is_refused(settings):
    with pytest.raises(EdgeftError) as info:
        resolve_recipe(settings)
    eb, mb = settings["effective_batch"], settings["micro_batch"]
    trained = -(-eb // mb) * mb
    assert f"effective_batch={eb} is not a multiple of micro_batch={mb}, so a step would train {trained}" in str(
        info.value)


def test_a_world_size_that_does_not_divide_the_effective_batch_is_refused_before_the_model_loads(
        tmp_path, monkeypatch, no_model_load):
    from edgeft.train.world import World

    def rank_0_of_3(world):  # what torchrun --nproc_per_node 3 gives rank 0, without forming a process group
        world.size, world.rank, world.local_rank, world.dist = 3, 0, 0, None

    monkeypatch.setattr(World, "__init__", rank_0_of_3)
    data, _ = toy_data(tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora")  # effective_batch 4, micro_batch 2
    one_line_error(invoke("train", "--base", build_model("qwen2"), "--data", data, "--config", recipe,
                          "-o", tmp_path / "out"), "micro_batch=2 x 3 processes, so a step would train 6")
    assert not (tmp_path / "out").exists()


def test_an_effective_batch_by_the_bases_size_that_micro_batch_does_not_divide_is_refused(tmp_path, no_model_load):
    """effective_batch left out is chosen by the base's size (16 for the fixture) after the recipe is read: the same
    rule holds for it, before the model loads."""
    data, _ = toy_data(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: lora\nmicro_batch: 3\n")
    one_line_error(invoke("train", "--base", build_model("qwen2"), "--data", data, "--config", recipe,
                          "-o", tmp_path / "out"), "recipe: effective_batch=16 is not a multiple of micro_batch=3")
    assert not (tmp_path / "out").exists()
