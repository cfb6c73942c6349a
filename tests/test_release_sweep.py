"""A release recipe's `sweep:` and `select: metric`: checked before anything trains, scored with the eval's
metric, and the sweep's winner shipped as the adapter."""

from __future__ import annotations

import json

import pytest

from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.test_sweep import GRID, _script_scores, _setup


def _settings(tmp_path, recipe_text: str):
    from edgeft.release.settings import resolve_settings

    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text)
    data, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path in (data, evals):
        path.write_text("{}\n")
    return resolve_settings(base=tmp_path / "base", data=data, eval_path=evals, recipe_path=recipe,
                            out=tmp_path / "out", release_root=tmp_path / "release")


@pytest.mark.parametrize("sweep, message", [
    ("{}", r"r.yaml: sweep: the grid is empty"),
    ("{rank: [4, 8]}", r"r.yaml: sweep: rank is not an edgeft train setting"),
    ("{lr: [0.001, -1]}", r"trial \{'lr': -1\}: .*lr=-1 must be a number > 0"),
])
def test_a_bad_sweep_is_refused_with_the_recipe(tmp_path, sweep, message):
    with pytest.raises(EdgeftError, match=message):
        _settings(tmp_path, f"sweep: {sweep}\n")


def test_selection_and_the_sweep_score_with_the_eval_metric(tmp_path):
    import sqlite3

    with sqlite3.connect(tmp_path / "shop.sqlite") as db:
        db.execute("CREATE TABLE t (x)")
    settings = _settings(tmp_path, "train: {validation: 0.1, select: metric}\n"
                                   "eval: {metric: 'sql-exec:{data_dir}/shop.sqlite'}\n")
    assert settings.train_config()["metric"] == f"sql-exec:{tmp_path}/shop.sqlite"
    settings = _settings(tmp_path, "train: {validation: 0.1, select: metric, metric: normalized}\nsweep: {r: [4]}\n")
    assert settings.train_config()["metric"] == "normalized"  # train: names its own
    assert "metric" not in _settings(tmp_path, "train: {lr: 0.001}\n").train_config()


def test_the_winner_s_run_is_the_adapter(tmp_path, monkeypatch):
    from edgeft.sweep import train_winner

    train_path, config = _setup(tmp_path)
    _script_scores(monkeypatch)
    adapter, lines = tmp_path / "adapter.partial", []
    record = train_winner(build_model("qwen2"), train_path, adapter, grid=GRID, metric="exact", config=config,
                          sweep_dir=tmp_path / "sweep", log=lines.append)
    winner = tmp_path / "sweep" / "trials" / record["winner"]
    assert record["winner"] == "lr=0.01_max_steps=2" and lines[-1].startswith("sweep: the winner lr=0.01_max_steps=2")
    assert (adapter / "adapter_model.safetensors").read_bytes() == (winner / "adapter_model.safetensors").read_bytes()
    assert json.loads((adapter / "summary.json").read_text())["best_val_score"] == 1.0
    assert not (adapter / "checkpoints").exists() and (winner / "checkpoints").is_dir()
    # A second release reuses every trial: nothing trains again.
    lines.clear()
    train_winner(build_model("qwen2"), train_path, adapter, grid=GRID, metric="exact", config=config,
                 sweep_dir=tmp_path / "sweep", log=lines.append)
    assert sum("done before, skipped" in line for line in lines) == 4


def test_a_trial_whose_recipe_changed_is_trained_again(tmp_path, monkeypatch):
    from edgeft.sweep import run_sweep

    train_path, config = _setup(tmp_path)
    _script_scores(monkeypatch)
    grid = {"lr": [0.01]}
    run_sweep(build_model("qwen2"), train_path, tmp_path / "s", grid=grid, metric="exact",
              config=dict(config, max_steps=2), log=lambda line: None)
    lines = []
    run_sweep(build_model("qwen2"), train_path, tmp_path / "s", grid=grid, metric="exact",
              config=dict(config, max_steps=2, r=8), log=lines.append)
    assert lines[0] == "trial lr=0.01: trained again (its recipe changed since it ran)"


def test_a_recipe_extends_another_section_by_section(tmp_path):
    from edgeft.release.settings import DEMO_RECIPE, load_release_recipe

    recipe = load_release_recipe(DEMO_RECIPE.with_name("sweep.yaml"), demo=False)
    demo = load_release_recipe(None, demo=True)
    assert recipe["name"] == "edgeft-demo-sweep" and recipe["eval"] == demo["eval"]
    assert recipe["train"] == {**demo["train"], "validation": 0.1, "select": "metric", "keep": "best"}
    assert recipe["sweep"] == {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 2]}
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(EdgeftError, match=r"a.yaml: extends: b.yaml: a cycle"):
        load_release_recipe(tmp_path / "b.yaml", demo=False)
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(EdgeftError, match=r"c.yaml: extends: nowhere.yaml: no such recipe"):
        load_release_recipe(tmp_path / "c.yaml", demo=False)
