"""The validation split: carved from the training data, never overlapping the eval set nor what trains."""

from __future__ import annotations

import json
import random

import pytest

from edgeft.data import dedup
from edgeft.data.split import carve_validation
from convert.common.errors import EdgeftError
from tests.train_helpers import TINY_RECIPE, write_jsonl

WORDS = ("amber lantern river copper meadow falcon granite harbor velvet orchard cobalt thistle willow ember "
         "saffron quarry marble juniper tundra lagoon basalt cedar dune glacier hollow ivory kestrel maple nectar "
         "opal pepper quartz raven sorrel timber umber violet walnut yarrow zephyr").split()


def varied(i: int, *, seed: int = 0) -> dict:
    """A conversation whose words differ from every other's: no two are near-duplicates by chance."""
    rng = random.Random(seed * 100_003 + i)
    question = " ".join(rng.sample(WORDS, 7))
    return {"messages": [{"role": "user", "content": f"Describe {question} item {i}."},
                         {"role": "assistant", "content": " ".join(rng.sample(WORDS, 6)) + f" {i}."}]}


def _texts(records) -> set[str]:
    return {dedup.normalize_text(r.messages[-1]["content"]) for r in records} | \
        {dedup.normalize_text(r.messages[0]["content"]) for r in records}


def test_validation_never_overlaps_the_eval_set_nor_the_trained_examples(tmp_path):
    rows = [varied(i) for i in range(60)]
    # Near-duplicate pairs (one word changed) must land on one side together.
    twins = []
    for i in range(0, 20, 2):
        twin = json.loads(json.dumps(rows[i]))
        twin["messages"][0]["content"] = twin["messages"][0]["content"].replace("Describe", "Explain")
        twins.append(twin)
    evals = [varied(1000 + i) for i in range(12)]
    # Six training examples hold an eval example's question or answer: leaks the split must never score on.
    leaks = []
    for i in range(6):
        leak = varied(2000 + i)
        leak["messages"][0 if i % 2 else 1]["content"] = evals[i]["messages"][0 if i % 2 else 1]["content"]
        leaks.append(leak)
    data = write_jsonl(tmp_path / "train.jsonl", rows + twins + leaks)
    eval_path = write_jsonl(tmp_path / "eval.jsonl", evals)

    carved = carve_validation(data, 0.3, eval_path=eval_path, seed=3)
    trained_lines = {r.line for r in carved.train}
    validation_lines = {r.line for r in carved.validation}
    assert validation_lines and not trained_lines & validation_lines
    assert not _texts(carved.validation) & _texts(carved.train)  # twins travel together
    eval_texts = {dedup.normalize_text(m["content"]) for row in evals for m in row["messages"]}
    assert not _texts(carved.validation) & eval_texts
    leak_lines = set(range(len(rows) + len(twins) + 1, len(rows) + len(twins) + len(leaks) + 1))
    assert not validation_lines & leak_lines
    assert {line for line, _ in carved.left_out} == leak_lines - trained_lines  # the chosen leaks, left out
    assert len(carved.train) + len(carved.validation) + len(carved.left_out) == len(rows + twins + leaks)
    assert carve_validation(data, 0.3, eval_path=eval_path, seed=3).validation == carved.validation  # by seed


def test_a_fraction_is_taken_of_what_the_metric_can_score(tmp_path):
    from runtime.metrics import parse_metric

    chats = [varied(i) for i in range(30)]
    records = [{"messages": [{"role": "user", "content": f"note {i}: {' '.join(WORDS[i:i + 5])}"},
                             {"role": "assistant", "content": json.dumps({"id": i, "word": WORDS[i]})}]}
               for i in range(30)]
    data = write_jsonl(tmp_path / "train.jsonl", chats + records)
    carved = carve_validation(data, 0.2, gold_problem=parse_metric("json-match").gold_problem)
    assert len(carved.validation) == 6 and all(r.line > 30 for r in carved.validation)
    assert len(carved.train) == 54  # every generic chat trains


def test_a_validation_file_that_repeats_training_is_refused(tmp_path):
    rows = [varied(i) for i in range(20)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", [varied(500), rows[7]])
    with pytest.raises(EdgeftError, match=r"val.jsonl:2: its .* is in the training data \(.*train.jsonl:8"):
        carve_validation(data, str(validation))
    fine = write_jsonl(tmp_path / "val2.jsonl", [varied(500), varied(501)])
    carved = carve_validation(data, str(fine))
    assert len(carved.train) == 20 and len(carved.validation) == 2


def test_a_split_that_leaves_too_little_to_train_on_is_one_line(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", [varied(i) for i in range(10)])
    with pytest.raises(EdgeftError, match=r"leaves 5 of 10 examples .* to train on"):
        carve_validation(data, 0.5)
    with pytest.raises(EdgeftError, match=r"gives 1 validation example"):
        carve_validation(data, 0.05)


@pytest.mark.parametrize("settings, message", [
    ({"validation": 0.7}, r"validation=0.7 must be a fraction of the training data in \(0, 0.5\]"),
    ({"select": "metric"}, r"select='metric' needs metric:"),
    ({"select": "best"}, r"select='best' is not one of loss, metric"),
    ({"validation": 0.1, "metric": "bleu"}, r"metric='bleu' .*unknown metric"),
    ({"lr": "fast"}, r"lr='fast' must be a number > 0, or auto"),
    ({"validation": 0.1, "select": "metric", "metric": "exact", "keep": "last"}, r"keep='last' contradicts select"),
])
def test_selection_settings_are_checked_with_the_recipe(settings, message):
    from edgeft.train.recipe import resolve_recipe

    with pytest.raises(EdgeftError, match=message):
        resolve_recipe(settings)
    assert resolve_recipe({"lr": "1e-3"}).lr == 1e-3 and resolve_recipe({"lr": "auto"}).lr is None
    assert resolve_recipe({"select": "metric", "metric": "exact"}).validation == 0.1  # a split of its own


def test_train_refuses_before_loading_a_model(tmp_path, no_model_load):
    from edgeft.train import train
    from tests.factory import build_model

    data = write_jsonl(tmp_path / "train.jsonl", [varied(i) for i in range(20)])
    base = build_model("qwen2")
    with pytest.raises(EdgeftError, match=r"gives 0 validation example.*whose gold the metric cannot score"):
        train(base, data, tmp_path / "out", progress=False,
              config=dict(TINY_RECIPE, validation=0.2, select="metric", metric="json-match"))
    file = write_jsonl(tmp_path / "val.jsonl", [varied(900), varied(901)])
    with pytest.raises(EdgeftError, match=r"validation split: .*val.jsonl:1: the gold answer is not JSON"):
        train(base, data, tmp_path / "out", progress=False,
              config=dict(TINY_RECIPE, validation=str(file), select="metric", metric="json-match"))
    small = write_jsonl(tmp_path / "small.jsonl", [varied(i) for i in range(12)])
    with pytest.raises(EdgeftError, match=r"leaves 6 of 12 examples"):
        train(base, small, tmp_path / "out", progress=False, config=dict(TINY_RECIPE, validation=0.5))
    assert not (tmp_path / "out").exists()
