"""The release's recipe and inputs as a hostile user writes them (edgeft/release/settings.py, the check stage and
`release verify`'s refusals): a recipe that is not a mapping, invalid YAML, a typo in a gate, a train setting or an eval key,
an unknown quant and gold answers the metric cannot score are refused in one line before any stage runs; a failed
gate says that an earlier release of the same name is still there and is not this model; `release verify` on a
folder that is not a release is one line."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from tests.factory import build_model
from tests.hostile import error_line, invoke, one_line_error, tree_state
from tests.train_helpers import toy_data


pytestmark = pytest.mark.hostile

@pytest.fixture
def inputs(tmp_path):
    train, evals = toy_data(tmp_path / "data")
    return {"base": build_model("qwen2"), "train": train, "eval": evals, "out": tmp_path / "out",
            "release": tmp_path / "release"}


def _release(inputs, recipe_text: str | None, *stage):
    args = ["release", "--base", inputs["base"], "--data", inputs["train"], "--eval", inputs["eval"],
            "--out", inputs["out"], "--release-dir", inputs["release"], "--name", "hostile"]
    if recipe_text is not None:
        recipe = inputs["out"].parent / "recipe.yaml"
        recipe.write_text(recipe_text)
        args += ["--recipe", recipe]
    return invoke(*args, *stage)


def _nothing_ran(inputs):
    return not inputs["out"].exists() and not inputs["release"].exists()


# Bad recipes and what their one error line must say, by the part of the recipe that is wrong.
NOT_A_RECIPE = [
    ("- name: x\n- quant: Q4_K_M\n", ["is a list, not a mapping"]),
    ("just a sentence\n", ["is a str, not a mapping"]),
    ("name: x\neval:\n  gates: {min_gain: 5\n", ["not valid YAML (line 4, column 1:"]),
    ("name: x\n\tquant: Q8_0\n", ["not valid YAML (line 2"]),
]
BAD_TOP_LEVEL = [
    ("nmae: x\n", ["unknown release recipe keys ['nmae']"]),
    ("quant: Q4_K_X\n", ["unknown quant type 'Q4_K_X'"]),
    ("name: ../elsewhere\n", ["is not a plain file name"]),
    ("description: [1, 2]\n", ["description=[1, 2] must be text"]),
]
BAD_TRAIN = [
    ("train: [r, 8]\n", ["train: must be a mapping"]),
    ("train:\n  learning_rate: 0.001\n", ["unknown recipe setting 'learning_rate'"]),
    ("train:\n  r: many\n", ["train: r='many' must be an integer"]),
]
BAD_EVAL = [
    ("eval:\n  gates:\n    min_gian: 5\n", ["unknown gate 'min_gian'", "known gates: min_gain"]),
    ("eval:\n  gates:\n    min_gain: lots\n", ["threshold 'lots' is not a number"]),
    ("eval:\n  gates: [min_gain]\n", ["eval.gates ['min_gain']: must be a mapping"]),
    ("eval:\n  metrc: exact\n", ["eval.metrc: unknown setting; known: metric"]),
    ("eval:\n  metric: exactly\n", ["eval.metric exactly: unknown metric"]),  # not --metric: a recipe key
    ("eval:\n  metric: sql-exec\n", ["eval.metric sql-exec: needs an argument"]),
    ("eval:\n  metric: 'regex:(unclosed'\n", ["eval.metric regex:(unclosed: invalid regular expression"]),
    ("eval:\n  max_tokens: 0\n", ["eval.max_tokens 0: must be at least 1"]),
    ("eval:\n  shots: yes\n", ["eval.shots True: must be a whole number"]),
    ("eval:\n  imatrix_examples: 0\n", ["eval.imatrix_examples 0: must be a whole number of at least 1"]),
    ("eval:\n  baseline: other.gguf\n", ["eval.baseline: unknown setting"]),  # the release's own base is it
    ("eval:\n  shots: -2\n", ["eval.shots -2: must be 0 or more"]),
    ("eval:\n  gates:\n    earned: .nan\n", ["gate earned: threshold nan must be a finite number"]),
    ("eval:\n  gates:\n    min_gain: -.inf\n", ["gate min_gain: threshold -inf must be a finite number"]),
    ("eval:\n  gates:\n    max_kld: yes\n", ["gate max_kld: threshold True is not a number"]),
    # Found in the sweep: each of these failed in the eval stage, after training, or printed nonsense figures.
    ("eval:\n  system: [a, b]\n", ["eval.system ['a', 'b']: must be text"]),
    ("eval:\n  probe: 5\n", ["eval.probe 5: must be a path"]),
    ("eval:\n  requests_per_day: -5\n", ["eval.requests_per_day -5: must be a number of requests a day above 0"]),
    ("eval:\n  requests_per_day: lots\n", ["eval.requests_per_day 'lots': must be"]),
    ("eval:\n  context_k: 5\n", ["eval.context_k 5 needs eval.context"]),  # was read by nothing
]


@pytest.mark.parametrize("text, needles", [*NOT_A_RECIPE, *BAD_TOP_LEVEL, *BAD_TRAIN, *BAD_EVAL])
def test_bad_recipe_is_refused_before_any_stage(inputs, text, needles):
    one_line_error(_release(inputs, text), *needles)
    assert _nothing_ran(inputs)


# Files only the recipe names: each was read first by the stage that needs it, after training.
MISSING_FILES = [
    ("eval:\n  context: '{data_dir}/docs.jsonl'\n", "eval.context", "docs.jsonl: not found"),
    ("eval:\n  context: '{data_dir}'\n", "eval.context", ": is a folder"),
    ("eval:\n  probe: '{data_dir}/general.txt'\n", "eval.probe", "general.txt: not found"),
    ("eval:\n  metric: 'sql-exec:{data_dir}/shop.sqlite'\n", "eval.metric sql-exec:", "shop.sqlite: not found"),
    ("eval:\n  metric: 'judge:{data_dir}/judge.gguf'\n", "eval.metric judge:", "judge.gguf: not found"),
    ("train:\n  chat_template: /nonexistent/t.jinja\n", "train.chat_template", "t.jinja: not found"),
    ("train:\n  validation: /nonexistent/v.jsonl\n", "train.validation", "v.jsonl: not found"),
    ("train:\n  {validation: 0.2, select: metric, metric: 'sql-exec:{data_dir}/v.sqlite'}\n", "train.metric sql-exec:",
     "v.sqlite: not found"),
]


@pytest.mark.parametrize("text, key, needle", MISSING_FILES, ids=[key for _, key, _ in MISSING_FILES])
def test_a_file_the_recipe_names_is_checked_before_any_stage(inputs, text, key, needle):
    one_line_error(_release(inputs, text), f"recipe.yaml: {key}", needle, "found before training")
    assert _nothing_ran(inputs)


def test_a_recipe_file_deleted_after_the_settings_stage_stops_the_check_stage(inputs):
    """The demo's files are made by the pipeline, so its recipe's files are checked again by the check stage."""
    from convert.common.errors import EdgeftError
    from edgeft.release.settings import resolve_settings
    from edgeft.release.stages import stage_check

    docs = inputs["train"].parent / "docs.jsonl"
    docs.write_text('{"text": "the orders table"}\n')
    (inputs["out"].parent / "recipe.yaml").write_text("eval:\n  context: '{data_dir}/docs.jsonl'\n")
    settings = resolve_settings(base=inputs["base"], data=inputs["train"], eval_path=inputs["eval"],
                                recipe_path=inputs["out"].parent / "recipe.yaml", out=inputs["out"])
    docs.unlink()
    with pytest.raises(EdgeftError, match="eval.context .*docs.jsonl: not found"):
        stage_check(settings)
    assert not settings.path("check").exists()


# What the eval stage reads besides the models, each refused by the check stage now instead of after training.
EVAL_INPUTS = [
    ("eval:\n  shots: 500\n", "only 16 solved conversations for eval.shots 500"),
    ("eval:\n  context: '{data_dir}/docs.jsonl'\n", "the corpus is empty"),
    ("eval:\n  probe: '{data_dir}/docs.jsonl'\n", "cannot read it as UTF-8 text"),
]


@pytest.mark.parametrize("text, needle", EVAL_INPUTS, ids=["shots", "context", "probe"])
def test_what_the_eval_stage_reads_is_read_by_the_check_stage(inputs, text, needle):
    (inputs["train"].parent / "docs.jsonl").write_bytes(b"" if "context" in text else b"\xff\xfe not text")
    error_line(_release(inputs, text, "stage", "check"), needle)
    assert not (inputs["out"] / "hostile" / "data-check.json").exists()


@pytest.mark.parametrize("where", ["out-in-base", "release-around-data"])
def test_release_never_writes_inside_or_around_its_inputs(inputs, tmp_path, where):
    """--out inside the base folder: the settings stage wrote OUT/NAME/settings.json into the base model."""
    base = tmp_path / "base"
    shutil.copytree(inputs["base"], base)
    data_dir = inputs["train"].parent
    out, release_dir, name = ((base, inputs["release"], "hostile") if where == "out-in-base" else
                              (inputs["out"], data_dir.parent, data_dir.name))
    before = tree_state(base, data_dir)
    one_line_error(invoke("release", "--base", base, "--data", inputs["train"], "--eval", inputs["eval"], "--out", out,
                          "--release-dir", release_dir, "--name", name, "stage", "settings"),
                   "--out" if where == "out-in-base" else "--release-dir", "write the output somewhere else")
    assert tree_state(base, data_dir) == before and not inputs["out"].exists()


def test_bad_quant_on_the_command_line_is_refused_before_any_stage(inputs):
    one_line_error(invoke("release", "--base", inputs["base"], "--data", inputs["train"], "--eval", inputs["eval"],
                          "--out", inputs["out"], "--release-dir", inputs["release"], "--quant", "Q3_K_Z"),
                   "unknown quant type")
    assert _nothing_ran(inputs)


def test_a_typo_in_a_gate_stops_every_make_stage(inputs):
    """`make release` runs one stage per process; each one checks the recipe first, the first (settings) too."""
    for stage in ("settings", "check", "train", "publish"):
        one_line_error(_release(inputs, "eval:\n  gates:\n    max_kdl: 0.5\n", "stage", stage), "unknown gate")
    assert _nothing_ran(inputs)


def test_gold_the_metric_cannot_score_is_refused_before_training(inputs, tmp_path):
    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE boxes (colour TEXT)")
    # The data check prints its report first; the refusal is the one error line.
    error_line(_release(inputs, f"eval:\n  metric: sql-exec:{db}\n", "stage", "check"),
                   "eval.jsonl:1:", "gold SQL fails", "4 of 4 eval examples cannot be scored with eval.metric")
    assert not (inputs["out"] / "hostile" / "data-check.json").exists()
    # A stage's error about a setting names the recipe key the user wrote, not the eval command's flag.
    error_line(_release(inputs, f"eval:\n  metric: sql-exec:{tmp_path}/missing.sqlite\n", "stage", "check"),
               "eval.metric sql-exec:", "missing.sqlite: not found")


def _publish_earlier_release(inputs, tmp_path):
    from edgeft.release.publish import publish_release

    gguf = tmp_path / "earlier.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 60)
    return publish_release("hostile", inputs["release"], gguf=gguf, base_dir=inputs["base"], quant="Q4_K_M",
                           recipe={}, data_files={"train": inputs["train"]}, metrics={}, gates=[])


def test_failed_gate_says_an_earlier_release_is_still_there_and_not_this_model(inputs, tmp_path):
    earlier = _publish_earlier_release(inputs, tmp_path)
    before = tree_state(earlier)
    report_dir = inputs["out"] / "hostile" / "eval"
    report_dir.mkdir(parents=True)
    (report_dir / "report.json").write_text(json.dumps({"gates": [
        {"gate": "min_gain", "threshold": 5, "value": 1.0, "passed": False, "text": "min_gain: 1 (need >= 5) — FAIL"}]}))
    line = one_line_error(_release(inputs, None, "stage", "publish"), "gate failed: min_gain",
                          f"nothing was published to {earlier}", "still holds an earlier release, published",
                          "which is NOT this model")
    assert str(report_dir) in line
    assert tree_state(earlier) == before


def test_verify_a_folder_without_a_manifest(tmp_path):
    folder = tmp_path / "not-a-release"
    folder.mkdir()
    (folder / "model.gguf").write_bytes(b"GGUF")
    one_line_error(invoke("release", "verify", folder), "no manifest.json", "not a published release")


@pytest.mark.parametrize("manifest, needle", [
    ("{not json", "damaged, not JSON"),
    ('["files"]', "has no valid file list"),
    ('{"files": [{"path": "a"}]}', "has no valid file list"),
])
def test_verify_a_damaged_manifest(tmp_path, manifest, needle):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "manifest.json").write_text(manifest)
    one_line_error(invoke("release", "verify", folder), needle)


# Names in a hostile manifest that no file can have: a traceback (NUL, lone surrogate) or a 5,000-character error.
UNNAMEABLE = [("a\u0000.txt", "'a\\x00.txt'"), ("a\ud800.txt", "'a\\ud800.txt'"), ("x" * 5000, "'xxxx")]


@pytest.mark.parametrize("name, shown", UNNAMEABLE)
def test_verify_a_manifest_naming_a_file_no_folder_can_hold(tmp_path, name, shown):
    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n")
    entries = [{"path": name, "size": 6, "sha256": "0" * 64}]
    (folder / "manifest.json").write_text(json.dumps({"files": entries}))
    result = invoke("release", "verify", folder)
    line = error_line(result, "differ from manifest.json; do not ship this folder")
    problem = next(text for text in result.output.splitlines() if "not a name a file can have" in text)
    assert problem.startswith(shown) and len(problem) < 300 and len(line) < 300


# One file listed twice (it passed: each entry was hashed against the same file).
LISTED_TWICE = [("a.txt", "a.txt"), ("a.txt", "./a.txt"), ("sub/../a.txt", "a.txt")]


@pytest.mark.parametrize("first, second", LISTED_TWICE)
def test_verify_a_manifest_listing_a_file_twice(tmp_path, first, second):
    import hashlib

    folder = tmp_path / "release"
    folder.mkdir()
    (folder / "a.txt").write_text("hello\n")
    entry = {"size": 6, "sha256": hashlib.sha256(b"hello\n").hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"files": [{"path": first, **entry}, {"path": second, **entry}]}))
    before = tree_state(folder)
    result = invoke("release", "verify", folder)
    error_line(result, "differ from manifest.json; do not ship this folder")
    assert f"{second}: listed more than once in the manifest" in result.output
    assert tree_state(folder) == before


def test_verify_refuses_paths_outside_the_release(inputs, tmp_path):
    earlier = _publish_earlier_release(inputs, tmp_path)
    manifest = json.loads((earlier / "manifest.json").read_text())
    outside = tmp_path / "secret.txt"
    outside.write_text("x")
    manifest["files"].append({"path": "../../secret.txt", "size": 1, "sha256": "0" * 64})
    (earlier / "manifest.json").write_text(json.dumps(manifest))
    result = invoke("release", "verify", earlier)
    assert result.exit_code == 1 and "../../secret.txt: points outside the release folder" in result.output


def test_verify_a_copied_release_still_passes(inputs, tmp_path):
    earlier = _publish_earlier_release(inputs, tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(earlier, copy)
    result = invoke("release", "verify", copy)
    assert result.exit_code == 0 and "every file matches" in result.output


def test_too_few_eval_examples_for_the_verdict_is_found_before_training(inputs):
    """The release always gates on `earned`; 4 eval examples failed that gate after training and quantizing."""
    error_line(_release(inputs, "eval: {metric: exact}\n", "stage", "check"),
               "eval.jsonl: 4 eval examples; gate earned needs at least 30", "eval.gates.earned: null")
    assert not (inputs["out"] / "hostile" / "data-check.json").exists()
    assert _release(inputs, "eval: {gates: {earned: null}}\n", "stage", "check").exit_code == 0
