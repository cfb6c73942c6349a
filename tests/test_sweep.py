"""edgeft sweep: trials scored by the metric, the best kept (a tie to the cheaper), finished trials skipped after a
kill, interrupted ones resumed, and bad input refused before anything trains."""

from __future__ import annotations

import json

import pytest
import yaml

from convert.common.errors import EdgeftError
from tests.factory import build_model
from tests.train_helpers import TINY_RECIPE, toy_conversation, toy_data, write_jsonl

GRID = {"lr": [0.001, 0.01], "max_steps": [4, 2]}


def _setup(tmp_path):
    train_path, _ = toy_data(tmp_path / "data", n_train=16)
    validation = write_jsonl(tmp_path / "data" / "val.jsonl", [toy_conversation(500 + i) for i in range(4)])
    config = dict(TINY_RECIPE, method="lora", validation=str(validation), eval_every=2, save_every=2,
                  early_stop=None)
    return train_path, config


def _script_scores(monkeypatch, kill_at: str | None = None):
    """Scores by the trial's lr (1.0 at 0.01, 0.25 otherwise): the sweep's choice is then known; `kill_at` names a
    trial whose last eval raises KeyboardInterrupt once (after its step-2 checkpoint), as a kill would."""
    from edgeft.train.select import MetricRun

    killed = []

    def scripted(self):
        if self.out_dir.name == kill_at and self.state["step"] == 4 and not killed:
            killed.append(self.out_dir.name)
            raise KeyboardInterrupt
        score = 1.0 if self.recipe.lr == 0.01 else 0.25
        n = len(self.validation.examples)
        return score, ["scripted"] * n, [score] * n

    monkeypatch.setattr(MetricRun, "_score", scripted)
    return killed


def test_sweep_picks_the_best_by_the_metric_a_tie_to_the_cheaper_and_skips_finished_trials(tmp_path, monkeypatch):
    from edgeft.sweep import run_sweep

    base = build_model("qwen2")
    train_path, config = _setup(tmp_path)
    out = tmp_path / "sweep"
    killed = _script_scores(monkeypatch, kill_at="lr=0.01_max_steps=4")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(base, train_path, out, grid=GRID, metric="exact", config=config, log=lambda line: None)
    assert killed == ["lr=0.01_max_steps=4"]
    first = out / "trials" / "lr=0.001_max_steps=4" / "summary.json"
    stamp = first.stat().st_mtime_ns
    record = json.loads((out / "sweep.json").read_text())
    assert [row["name"] for row in record["trials"] if "score" in row] == ["lr=0.001_max_steps=4",
                                                                          "lr=0.001_max_steps=2"]

    lines = []
    record = run_sweep(base, train_path, out, grid=GRID, metric="exact", config=config, log=lines.append)
    assert "trial lr=0.001_max_steps=4: done before, skipped" in lines
    assert "trial lr=0.001_max_steps=2: done before, skipped" in lines
    assert "trial lr=0.01_max_steps=4: resuming" in lines and "trial lr=0.01_max_steps=2: training" in lines
    assert first.stat().st_mtime_ns == stamp  # a finished trial is not trained again
    scores = {row["name"]: row["score"] for row in record["trials"]}
    assert scores == {"lr=0.001_max_steps=4": 0.25, "lr=0.001_max_steps=2": 0.25, "lr=0.01_max_steps=4": 1.0,
                      "lr=0.01_max_steps=2": 1.0}
    assert record["winner"] == "lr=0.01_max_steps=2"  # tied with max_steps=4, which trained on twice the sequences
    winner = yaml.safe_load((out / "winner.yaml").read_text())
    assert (winner["lr"], winner["max_steps"], winner["select"], winner["metric"]) == (0.01, 2, "metric", "exact")
    assert winner["effective_batch"] == TINY_RECIPE["effective_batch"]  # every setting, resolved
    table = (out / "sweep.md").read_text()
    assert "| lr=0.01_max_steps=2 **winner** | 0.01 | 2 | 100.0% |" in table
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_max_trials_and_the_time_budget_leave_trials_out(tmp_path, monkeypatch):
    from edgeft.sweep import run_sweep

    base = build_model("qwen2")
    train_path, config = _setup(tmp_path)
    _script_scores(monkeypatch)
    record = run_sweep(base, train_path, tmp_path / "a", grid=GRID, metric="exact", config=config, max_trials=1,
                       log=lambda line: None)
    assert [row["name"] for row in record["trials"]] == ["lr=0.001_max_steps=4"]
    assert record["not_run"] == ["lr=0.001_max_steps=2", "lr=0.01_max_steps=4", "lr=0.01_max_steps=2"]
    record = run_sweep(base, train_path, tmp_path / "b", grid=GRID, metric="exact", config=config, budget_s=0,
                       log=lambda line: None)
    assert record["winner"] is None and len(record["not_run"]) == 4
    assert not (tmp_path / "b" / "trials").exists()


@pytest.mark.parametrize("grid, message", [
    ({}, r"the grid is empty"),
    ({"learning_rate": [1e-3]}, r"learning_rate is not an edgeft train setting"),
    ({"lr": []}, r"lr: must be a non-empty list"),
    ({"lr": 1e-3}, r"lr: must be a non-empty list"),
    ({"metric": ["exact"]}, r"metric is how trials are compared"),
    ({"lr": [1e-3, -1.0]}, r"trial \{'lr': -1.0\}: .*lr=-1.0 must be a number > 0"),
])
def test_bad_grids_are_refused_before_anything_trains(tmp_path, no_model_load, grid, message):
    from edgeft.sweep import run_sweep

    train_path, config = _setup(tmp_path)
    with pytest.raises(EdgeftError, match=message):
        run_sweep(build_model("qwen2"), train_path, tmp_path / "out", grid=grid, metric="exact", config=config)
    assert not (tmp_path / "out").exists()


def test_bad_data_for_any_trial_is_refused_before_the_first_trains(tmp_path, no_model_load):
    from edgeft.sweep import run_sweep

    train_path, config = _setup(tmp_path)
    base = build_model("qwen2")
    with pytest.raises(EdgeftError, match=r"val.jsonl:1: the gold answer is not JSON"):
        run_sweep(base, train_path, tmp_path / "out", grid=GRID, metric="json-match", config=config)
    from tests.test_validation_split import varied

    small = write_jsonl(tmp_path / "small.jsonl", [varied(i) for i in range(12)])
    with pytest.raises(EdgeftError, match=r"leaves 6 of 12 examples"):
        run_sweep(base, small, tmp_path / "out", grid={"seed": [0, 1]}, metric="exact",
                  config=dict(config, validation=0.5))
    assert not (tmp_path / "out").exists()


def test_the_command_line_says_a_bad_grid_in_one_line(tmp_path, no_model_load):
    from click.testing import CliRunner

    from edgeft.cli import main

    train_path, config = _setup(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text("lr: [1.0e-3]\nrank: [4, 8]\n")
    result = CliRunner().invoke(main, ["sweep", "--base", str(build_model("qwen2")), "--data", str(train_path),
                                       "--grid", str(grid), "--metric", "exact", "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    from edgeft.train.recipe import FIELDS

    assert result.output.strip().splitlines() == [
        f"Error: {grid}: rank is not an edgeft train setting; sweep any of: {', '.join(FIELDS)}"]
