"""The second demo task (event notes -> JSON): deterministic, scoreable, and no eval answer seen in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeft.demo.event_task import EVAL_PATTERNS, FIELDS, N_EVAL, N_TRAIN, TRAIN_PATTERNS, generate, write_event_task
from convert.common.errors import EdgeftError

RECIPE = Path(__file__).resolve().parent.parent / "edgeft" / "demo" / "events.yaml"


def _records(rows):
    return [json.loads(row["messages"][-1]["content"]) for row in rows]


def test_the_task_is_deterministic_and_eval_is_unseen():
    train, evaluation = generate()
    assert (train, evaluation) == generate() and (len(train), len(evaluation)) == (N_TRAIN, N_EVAL)
    for record in _records(train + evaluation):
        assert tuple(record) == FIELDS and isinstance(record["people"], int)
    train_records, eval_records = _records(train), _records(evaluation)
    assert not {json.dumps(r) for r in eval_records} & {json.dumps(r) for r in train_records}
    pairs = {(r["event"], r["city"]) for r in train_records}
    assert not {(r["event"], r["city"]) for r in eval_records} & pairs
    assert not set(EVAL_PATTERNS) & set(TRAIN_PATTERNS)
    assert {r["time"] is None for r in eval_records} == {True, False}  # both shapes of answer are asked


def test_written_files_pass_the_data_check_and_json_match(tmp_path):
    from edgeft.data.check import check_dataset
    from edgeft.release.settings import load_release_recipe
    from runtime.examples import read_examples
    from runtime.metrics import parse_metric, unscoreable

    paths = write_event_task(tmp_path / "events", n_train=60, n_eval=20, n_general=10)
    report = check_dataset(paths["train"], eval_path=paths["eval"])
    assert not report.errors
    assert not unscoreable(parse_metric("json-match"), read_examples(paths["eval"]))
    from edgeft.release.settings import resolve_settings

    recipe = load_release_recipe(RECIPE, demo=False)
    settings = resolve_settings(base=tmp_path / "base", data=paths["train"], eval_path=paths["eval"],
                                recipe_path=RECIPE, out=tmp_path / "out", release_root=tmp_path / "release")
    assert settings.train_config()["metric"] == recipe["eval"]["metric"] == "json-match"
    assert settings.train_config()["select"] == "metric" and set(recipe["sweep"]) == {"lr", "epochs"}
    example = json.loads(recipe["eval"]["system"].split("Example: ", 1)[1])
    assert tuple(example) == FIELDS  # the prompted base is shown the record the fine-tune learns
    first = RECIPE.read_text().splitlines()[0]
    assert first.startswith("# make release DEMO=events") and "--recipe edgeft/demo/events.yaml" in first


def test_a_folder_of_something_else_is_refused(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(EdgeftError, match="mine"):
        write_event_task(tmp_path / "mine")
    assert not (tmp_path / "mine" / "task.json").exists()


def test_make_release_demo_events_makes_the_data_and_runs_the_events_recipe(tmp_path):
    from tests.test_release_make import make_release, would_run

    made = make_release(tmp_path, "DEMO=events", f"OUT={tmp_path / 'out'}", f"RELEASE_DIR={tmp_path / 'rel'}",
                        dry_run=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "--recipe edgeft/demo/events.yaml" in made.stdout and "--name edgeft-events" in made.stdout
    assert would_run(made.stdout)[-1] == "publish"
