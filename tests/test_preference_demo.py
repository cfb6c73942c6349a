"""The demo's DPO stage: pairs from the demo's own SQL conversations, chosen the gold query, rejected a plausible
wrong answer (dropped filter, wrong column: both run on the shop database and return other rows; or not SQL)."""

from __future__ import annotations

import sqlite3

from edgeft.demo import sql_task
from edgeft.demo.sql_pairs import sql_pairs, write_pairs


def test_demo_pairs_are_valid_and_wrong_in_three_ways(tmp_path):
    train, evaluation = sql_task.generate()
    sql_task.write_jsonl(train, tmp_path / "train.jsonl")
    sql_task.write_jsonl(evaluation, tmp_path / "eval.jsonl")
    db = sqlite3.connect(sql_task.build_database(tmp_path / "shop.sqlite"))
    paths = write_pairs(tmp_path)
    pairs = sql_pairs(tmp_path / "train.jsonl")
    assert len(pairs) == len(train)
    kinds = set()
    for pair in pairs:
        assert pair["prompt"][0]["content"] == sql_task.SYSTEM_PROMPT and pair["chosen"] != pair["rejected"]
        if not pair["rejected"].startswith("SELECT"):
            kinds.add("verbose")
            continue
        kinds.add("dropped filter" if "WHERE" not in pair["rejected"] else "wrong column")
        assert db.execute(pair["rejected"]).fetchall() != db.execute(pair["chosen"]).fetchall()
    assert kinds == {"verbose", "dropped filter", "wrong column"}
    from edgeft.data.check import check_dataset

    report = check_dataset(paths["pairs"], eval_path=paths["heldout"])
    assert not report.errors, report.errors[:3]
    assert report.stats["examples"] == len(train) and report.stats["eval_examples"] == len(evaluation)


def test_the_dpo_recipe_resolves():
    from pathlib import Path

    from edgeft.train.recipe import resolve_recipe

    recipe = resolve_recipe(Path(sql_task.__file__).with_name("dpo.yaml"))
    assert recipe.objective == "dpo" and recipe.beta == 0.5 and recipe.method == "lora" and recipe.epochs == 0.5
