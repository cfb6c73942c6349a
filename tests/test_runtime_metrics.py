"""Metrics, bootstrap statistics, gates and report rendering: no model needed."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from convert.common.errors import EdgeftError
from runtime.gates import check_gates, recipe_eval, resolve_gates
from runtime.metrics import Judge, parse_metric, strip_fences
from runtime.stats import mean_interval, paired_difference


@pytest.fixture
def shop_db(tmp_path):
    path = tmp_path / "shop.sqlite"
    connection = sqlite3.connect(path)
    connection.executescript("""
        CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, total REAL);
        INSERT INTO orders VALUES (1, 'ann', 10.0), (2, 'bob', 5.5), (3, 'ann', 2.5), (4, 'cy', 7.0);
    """)
    connection.commit()
    connection.close()
    return path


def test_exact_and_normalized():
    exact, normalized = parse_metric("exact"), parse_metric("normalized")
    assert exact.score(" Paris\n", "Paris").score == 1.0
    assert exact.score("paris", "Paris").score == 0.0
    assert normalized.score("  the   CAPITAL\nis Paris ", "The capital is paris").score == 1.0
    assert normalized.score("Paris.", "Paris").score == 0.0


def test_json_valid_and_match():
    valid, match = parse_metric("json-valid"), parse_metric("json-match")
    assert valid.score('{"a": 1}', "").score == 1.0
    assert valid.score("```json\n[1, 2]\n```", "").score == 1.0
    verdict = valid.score("{'a': 1}", "")
    assert verdict.score == 0.0 and "invalid JSON" in verdict.note
    # parsed equality: key order and spacing do not matter, values do
    assert match.score('{"b": [1, 2], "a": "x"}', '{"a":"x","b":[1,2]}').score == 1.0
    assert match.score('{"a": "x", "b": [2, 1]}', '{"a":"x","b":[1,2]}').score == 0.0
    assert match.score("not json", '{"a": 1}').score == 0.0
    with pytest.raises(EdgeftError, match="gold answer is not JSON"):
        match.score('{"a": 1}', "plain text gold")


def test_regex_format_and_extraction():
    has_number = parse_metric(r"regex:^\d+$")
    assert has_number.score("42", "").score == 1.0
    assert has_number.score("forty-two", "").score == 0.0
    extract = parse_metric(r"regex:(?i)answer:\s*(\w+)")
    assert extract.score("Let me think. Answer: blue", "answer: blue").score == 1.0
    assert extract.score("Answer: red", "blue").score == 0.0
    assert extract.score("no idea", "blue").note == "pattern not found"
    with pytest.raises(EdgeftError, match="invalid regular expression"):
        parse_metric("regex:(unclosed")


def test_sql_exec_order_insensitive_and_robust(shop_db):
    metric = parse_metric(f"sql-exec:{shop_db}")
    gold = "SELECT customer, SUM(total) FROM orders GROUP BY customer ORDER BY customer"
    reordered = "```sql\nSELECT customer, sum(total) AS t FROM orders GROUP BY customer ORDER BY t DESC\n```"
    assert metric.score(reordered, gold).score == 1.0
    assert metric.score("SELECT customer, total FROM orders", gold).score == 0.0
    # invalid SQL is wrong, never an exception
    broken = metric.score("SELEC nonsense FROM", gold)
    assert broken.score == 0.0 and "SQL error" in broken.note
    assert metric.score("SELECT * FROM missing_table", gold).score == 0.0
    assert metric.score("SELECT 1; SELECT 2", gold).score == 0.0
    # a destructive prediction cannot change the database (read-only connection)
    assert metric.score("DELETE FROM orders", gold).score == 0.0
    assert metric.score(gold, gold).score == 1.0
    # duplicates matter: result sets are compared as multisets
    assert metric.score("SELECT customer FROM orders", "SELECT customer FROM orders GROUP BY customer").score == 0.0
    # 10 and 10.0 are the same answer
    assert metric.score("SELECT 10", "SELECT 10.0").score == 1.0


def test_sql_exec_missing_or_bad_database(tmp_path):
    with pytest.raises(EdgeftError, match="SQLite file not found") as error:
        parse_metric(f"sql-exec:{tmp_path / 'nope.sqlite'}")
    assert "\n" not in str(error.value)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(EdgeftError, match="not an SQLite database"):
        parse_metric(f"sql-exec:{text}")


def test_unknown_metric_and_missing_argument():
    with pytest.raises(EdgeftError, match="unknown metric.*sql-exec:DB.sqlite"):
        parse_metric("bleu")
    with pytest.raises(EdgeftError, match="needs an argument"):
        parse_metric("sql-exec")


def test_judge_verdict_parsing_counts_unparseable(tmp_path):
    judge = Judge.__new__(Judge)  # parsing needs no model
    judge.unparsed = 0
    assert judge.parse("The answer matches.\nScore: 5").score == 1.0
    assert judge.parse("score = 3").score == 0.5
    assert judge.parse("**Score:** 1").score == 0.0
    bad = judge.parse("I cannot decide.")
    assert bad.score == 0.0 and not bad.parsed and judge.unparsed == 1


def test_strip_fences():
    assert strip_fences("```sql\nSELECT 1\n```") == "SELECT 1"
    assert strip_fences("  plain ") == "plain"


def test_bootstrap_intervals():
    assert mean_interval([1.0] * 20) == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 20}
    rng = np.random.default_rng(1)
    model = (rng.random(200) < 0.7).astype(float)
    base = (rng.random(200) < 0.4).astype(float)
    difference = paired_difference(model, base)
    assert difference["low"] < difference["mean"] < difference["high"]
    assert difference["low"] > 0  # a 30-point gap on 200 examples is clearly significant
    assert difference["p_not_better"] < 0.01
    same = paired_difference(model, model)
    assert same["mean"] == same["low"] == same["high"] == 0.0
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])


def test_gates_resolution_and_checks(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("eval:\n  gates:\n    min_gain: 5\n    max_ppl_ratio: 1.2\n")
    gates = resolve_gates({"min_gain": 10.0, "max_kld": None}, recipe_eval(recipe)["gates"])
    assert gates == {"min_gain": 10.0, "max_ppl_ratio": 1.2}  # CLI beats the recipe; unset flags do not count
    report = {"difference": {"mean": 0.08}, "probe": {"ppl_ratio": 1.1}}
    rows = {row["gate"]: row for row in check_gates(gates, report)}
    assert not rows["min_gain"]["passed"] and "min_gain" in rows["min_gain"]["text"]
    assert rows["max_ppl_ratio"]["passed"]
    missing = check_gates({"max_kld": 0.1}, report)[0]
    assert not missing["passed"] and "not measured" in missing["text"]
    with pytest.raises(EdgeftError, match="unknown gate"):
        resolve_gates({"min_bleu": 1})


def test_when_each_gate_is_on_comes_from_its_row():
    from runtime.eval_settings import EvalSettings, SettingError
    from runtime.gates import GATES, gates_on, release_gates

    assert release_gates({}) == {"earned": GATES["earned"].default} and release_gates({"earned": None}) == {"earned": None}
    assert gates_on({}, EvalSettings(hf="merged")) == {"max_hf_mismatches": GATES["max_hf_mismatches"].default}
    assert gates_on({"max_hf_mismatches": 2, "earned": None}, EvalSettings(hf="m")) == {"max_hf_mismatches": 2.0}
    assert gates_on({}, EvalSettings()) == {}
    with pytest.raises(SettingError, match="gate min_speed_ratio needs baseline with speed"):
        gates_on({"min_speed_ratio": 0.9}, EvalSettings(baseline="base.gguf", speed=False))


def test_report_files(tmp_path):
    from runtime.report import render_review, write_all

    rows = [{"line": i + 1, "question": f"q{i}", "gold": "a", "prediction": "a" if i % 2 else "b",
             "model_score": float(i % 2), "model_note": "", "baseline": "b", "baseline_score": 0.0,
             "baseline_note": ""} for i in range(60)]
    report = {"model": "ft.gguf", "baseline": "base.gguf", "data": "eval.jsonl", "metric": "exact", "n": 60,
              "settings": {"max_tokens": 8, "system": "s", "shots": 2},
              "scores": {"model": mean_interval([r["model_score"] for r in rows]),
                         "baseline": mean_interval([0.0] * 60)},
              "difference": paired_difference([r["model_score"] for r in rows], [0.0] * 60),
              "gates": [{"gate": "min_gain", "passed": False, "text": "min_gain: 50 >= 60 — FAIL"}]}
    paths = write_all(report, rows, tmp_path)
    from runtime.eval_settings import REPORT_MARKER
    from runtime.report import EVAL_FILES, FLEET_FILES

    # one table names the files: what write_all writes, the folder marker, the fleet's subset
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(EVAL_FILES.values()) == sorted(paths)
    assert REPORT_MARKER == EVAL_FILES["report"] and set(FLEET_FILES) <= set(EVAL_FILES)
    assert json.loads(paths["report.json"].read_text())["n"] == 60
    markdown = paths["report.md"].read_text()
    assert "Gates failed: min_gain" in markdown and "Difference (fine-tune − baseline)" in markdown
    assert paths["eval.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    review = render_review(rows, has_baseline=True)
    assert review.count("\n## ") == 50
    assert "30 of 60 examples were scored differently" in review


def test_speed_ratio_pairs_alternating_rounds():
    from runtime.throughput import speed_ratio

    # Two equally fast files on a busy box: load hit round 1 for both and round 3 for the model only.
    model = {"tg_tok_s": 3000.0, "tg_runs": [3000.0, 1000.0, 2600.0], "paired_rounds": True}
    base = {"tg_tok_s": 3900.0, "tg_runs": [3100.0, 1050.0, 3900.0], "paired_rounds": True}
    assert speed_ratio(model, base)["tg"] == pytest.approx(1000.0 / 1050.0)
    # Unpaired results (one process each) fall back to the ratio of medians.
    unpaired = {key: value for key, value in model.items() if key != "paired_rounds"}
    assert speed_ratio(unpaired, base)["tg"] == pytest.approx(3000.0 / 3900.0)


# Patterns that backtrack exponentially in Python's re (hours on these inputs), bounded by the regex package's timeout.
CATASTROPHIC = [(r"regex:^(a|a)*$", "a" * 40 + "b"), (r"regex:^((a|a)*)$", "a" * 40 + "!")]


@pytest.mark.parametrize("spec, answer", CATASTROPHIC)
def test_a_catastrophic_regex_gives_up_in_one_line(monkeypatch, spec, answer):
    from runtime.metrics import Regex

    monkeypatch.setattr(Regex, "seconds", 0.05)
    metric = parse_metric(spec)
    with pytest.raises(EdgeftError, match=r"gave up after 0.05 s on a model's answer \(41 characters, 'aaaa.*"
                                          r"backtracks catastrophically; rewrite it without nested repeats"):
        metric.score(answer, "a")
    assert metric.score("aaa", "aaa").score == 1.0  # the same pattern on an answer it can finish


def test_a_catastrophic_regex_on_a_gold_answer_names_its_line(monkeypatch):
    from runtime.examples import Example
    from runtime.metrics import Regex, refuse_unscoreable

    monkeypatch.setattr(Regex, "seconds", 0.05)
    examples = [Example(1, [], "aaa"), Example(2, [], "a" * 40 + "!")]
    with pytest.raises(EdgeftError, match=r"^eval.jsonl:2: metric regex:\^\(\(a\|a\)\*\)\$: gave up after 0.05 s on "
                                          "a gold answer"):
        refuse_unscoreable(parse_metric(r"regex:^((a|a)*)$"), examples, "eval.jsonl", r"regex:^((a|a)*)$")


def test_an_invalid_pattern_is_found_without_building_the_metric():
    from runtime.metrics import split_metric_spec

    with pytest.raises(EdgeftError, match="invalid regular expression"):
        split_metric_spec("regex:(unclosed")
    assert split_metric_spec(r"regex:(\d+)") == ("regex", r"(\d+)")


@pytest.mark.parametrize("predicted", ["ATTACH DATABASE '{dir}/attached.db' AS e",
                                       "VACUUM INTO '{dir}/copy.db'",
                                       "PRAGMA writable_schema = 1"])
def test_predicted_sql_cannot_write_any_file(shop_db, tmp_path, predicted):
    """mode=ro protected the eval's database only: ATTACH and VACUUM INTO created files wherever the user could
    write (and ATTACH of another database let a prediction change it)."""
    metric = parse_metric(f"sql-exec:{shop_db}")
    before = sorted(tmp_path.iterdir())
    verdict = metric.score(predicted.format(dir=tmp_path), "SELECT COUNT(*) FROM orders")
    assert verdict.score == 0.0 and ("not authorized" in verdict.note or "authorization denied" in verdict.note)
    assert sorted(tmp_path.iterdir()) == before
    recursive = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4) SELECT COUNT(*) FROM n"
    assert metric.score(recursive, "SELECT COUNT(*) FROM orders").score == 1.0  # reading is all a query needs


def test_a_rubric_or_database_that_is_not_a_regular_file_is_one_line(tmp_path):
    """A pipe as --rubric blocked the eval for good and /dev/zero filled the memory; a folder as the sql-exec
    database was 'SQLite file not found'."""
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for path in (pipe, "/dev/zero", tmp_path):
        with pytest.raises(EdgeftError, match=f"rubric {path}: not a regular file; pass a plain-text rubric file"):
            parse_metric("exact", rubric_path=str(path))
    for path in (pipe, tmp_path):
        with pytest.raises(EdgeftError, match=f"metric sql-exec:{path}: not a regular file"):
            parse_metric(f"sql-exec:{path}")
