"""Training pieces that need no model: recipe precedence, batch plan, LR schedule, loss masking."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from convert.common.errors import EdgeftError
from edgeft.train.batches import label_count, plan_epoch
from edgeft.train.loop import cosine_with_warmup
from edgeft.train.recipe import Recipe, resolve_recipe, save_recipe

DEFAULT_YAML = Path(__file__).resolve().parent.parent / "edgeft" / "recipes" / "default.yaml"


def test_default_yaml_is_the_defaults_and_starts_with_the_command():
    assert resolve_recipe(DEFAULT_YAML) == Recipe()
    first = DEFAULT_YAML.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# edgeft train --base") and "--config edgeft/recipes/default.yaml" in first


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    config = tmp_path / "r.yaml"
    config.write_text("lr: 3.0e-4\nr: 8\nepochs: 3\n")
    recipe = resolve_recipe(config, r=32, lr=None)
    assert (recipe.r, recipe.lr, recipe.epochs, recipe.dropout) == (32, 3e-4, 3.0, 0.05)
    assert recipe.lora_alpha == 64.0  # alpha defaults to 2r of the resolved r
    assert recipe.use_gradient_checkpointing  # qlora default
    assert not resolve_recipe(method="lora").use_gradient_checkpointing


def test_saved_recipe_round_trips(tmp_path):
    recipe = resolve_recipe({"r": 4, "target_modules": ["q_proj", "v_proj"], "dora": True})
    save_recipe(recipe, tmp_path / "recipe.yaml", extra={"base": "x"})
    assert resolve_recipe(tmp_path / "recipe.yaml") == recipe


@pytest.mark.parametrize("text, fragment", [
    ("learning_rate: 0.1\n", "unknown recipe setting 'learning_rate'"),
    ("r: many\n", "r='many' must be an integer"),
    ("method: full\n", "method='full' is not one of qlora, lora"),
    ("method: dpo\n", "is not one of qlora, lora (preference tuning is an objective: objective: dpo or orpo)"),
    ("r: [1\n", "r.yaml:2: recipe is not valid YAML"),
    ("- 1\n", "must be a mapping"),
])
def test_bad_recipe_is_one_clear_line(tmp_path, text, fragment):
    config = tmp_path / "r.yaml"
    config.write_text(text)
    with pytest.raises(EdgeftError) as info:
        resolve_recipe(config)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_grad_accum_fills_the_effective_batch_exactly():
    recipe = Recipe(effective_batch=32, micro_batch=4)
    assert [recipe.grad_accum(w) for w in (1, 2, 4, 8)] == [8, 4, 2, 1]
    for world, trained in ((3, 36), (16, 64)):  # a step of another size than the recipe says is refused
        with pytest.raises(EdgeftError, match=f"x {world} processes, so a step would train {trained} sequences"):
            recipe.grad_accum(world)


@pytest.mark.parametrize("group", [False, True])
def test_plan_visits_every_example_once_per_epoch(group):
    lengths = [(i * 37) % 23 + 1 for i in range(103)]
    plan = plan_epoch(lengths, micro_batch=4, accum=3, world=1, seed=5, epoch=0, group_by_length=group)
    seen = sorted(i for step in plan.steps for mb in step for i in mb)
    assert seen == list(range(103))
    assert all(len(step) <= 3 for step in plan.steps)
    again = plan_epoch(lengths, micro_batch=4, accum=3, world=1, seed=5, epoch=0, group_by_length=group)
    other = plan_epoch(lengths, micro_batch=4, accum=3, world=1, seed=5, epoch=1, group_by_length=group)
    assert again.steps == plan.steps and other.steps != plan.steps


def test_group_by_length_cuts_padding():
    lengths = [(i * 7919) % 200 + 5 for i in range(400)]

    def padded(group):
        plan = plan_epoch(lengths, micro_batch=8, accum=1, world=1, seed=0, epoch=0, group_by_length=group)
        return sum(len(mb) * max(lengths[i] for i in mb) for step in plan.steps for mb in step)

    assert padded(True) < 0.6 * padded(False)


def test_plan_splits_steps_evenly_over_processes():
    plan = plan_epoch([10] * 22, micro_batch=2, accum=2, world=2, seed=0, epoch=0, group_by_length=False)
    # 11 micro-batches, 4 per step: steps of 4, 4, then 3 cut to 2 so both processes get one.
    assert [len(step) for step in plan.steps] == [4, 4, 2]
    shares = [plan.for_rank(2, rank, 2) for rank in (0, 1)]
    assert all(len(share) == 1 for share in shares) and shares[0] != shares[1]


def test_cosine_with_warmup():
    factor = cosine_with_warmup(3, 13)
    values = [factor(s) for s in range(13)]
    assert values[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert values[3] == 1.0 and values[8] == pytest.approx(0.5)
    assert all(a >= b for a, b in zip(values[3:], values[4:]))
    assert math.isclose(factor(13), 0.0, abs_tol=1e-12)


def test_label_count_ignores_the_unshifted_first_position():
    assert label_count({"labels": [5, -100, 7, 8]}) == 2


def test_record_eval_keeps_best_and_stops_after_patience():
    from edgeft.train.loop import record_eval

    state = {"best_eval": None, "best_step": None, "evals_without_best": 0, "stopped_early": False}
    history = [(10, 2.0), (20, 1.5), (30, 1.6), (40, 1.4), (50, 1.45), (60, 1.5)]
    improved = [record_eval(state, step, loss, patience=2) for step, loss in history[:5]]
    assert improved == [True, True, False, True, False] and not state["stopped_early"]
    assert not record_eval(state, *history[5], patience=2)
    assert state["stopped_early"] and (state["best_step"], state["best_eval"]) == (40, 1.4)


SUMMARY = {"method": "qlora", "device": "cpu", "processes": 1, "trainable_params": 10, "total_params": 100,
           "trainable_pct": 10.0, "steps": 40, "planned_steps": 40, "stopped_early": False, "last_batch_loss": 0.25,
           "last_eval_loss": 0.016, "last_eval_step": 40, "best_eval_loss": 0.015, "best_step": 30,
           "adapter_step": 30, "tokens_per_s": 100.0, "tokens": 4000, "train_seconds": 40.0, "peak_memory_mb": 900,
           "added_tokens": []}


def test_the_summary_names_each_loss_for_what_it_is():
    """The last batch's loss (one batch, often not the task's: 0.25 in the demo where held-out loss was 0.016) is
    not the run's loss; the held-out ones lead, and the line with the adapter's weights says so."""
    from edgeft.train import format_summary

    lines = format_summary(SUMMARY)
    loss_lines = [line for line in lines if "loss" in line or "eval" in line]
    assert loss_lines == ["eval loss     0.0160 at step 40 (held-out, the last eval)",
                          "best eval     0.0150 at step 30 (the adapter's weights)",
                          "batch loss    0.2500 (the last training batch only, not the model)"]
    assert not any("final" in line for line in lines)
    no_eval = dict(SUMMARY, last_eval_loss=None, last_eval_step=None, best_eval_loss=None, best_step=None,
                   adapter_step=40)
    assert "eval loss     - (no held-out data; pass --eval to measure one)" in format_summary(no_eval)
