"""edgeft eval, the command: what it refuses (a recipe that is no mapping, a device as data, an adapter GGUF as the
model), which output folders it may replace, and what cannot be scored is refused before any generation (one line,
nothing written), while a check that fails is a failed gate on the console and in the report, never a line in
report.md alone."""

from __future__ import annotations

import json
import shutil
import sqlite3

import pytest

from convert import convert_model
from tests.factory import build_model
from tests.hostile import _folder, error_line, invoke, one_line_error, shown_lines, tree_state
from tests.train_helpers import toy_data

@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from convert import convert_model

    return convert_model(build_model("llama"), tmp_path_factory.mktemp("extra") / "m.gguf", outtype="f16")


@pytest.mark.hostile
def test_eval_output_folder_holding_the_model_is_refused(tmp_path, gguf):
    """An earlier eval folder (report.json) may be replaced; the model inside it must not go with it."""
    folder = tmp_path / "eval"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    model = folder / "m.gguf"
    shutil.copyfile(gguf, model)
    _, evals = toy_data(tmp_path / "data")
    before = tree_state(folder)
    one_line_error(invoke("eval", model, "--data", evals, "-o", folder, "--ctx", "256"), "holds the model")
    assert tree_state(folder) == before


@pytest.mark.hostile
@pytest.mark.parametrize("text, needle", [("- min_gain: 5\n", "is a list, not a mapping"),
                                          ("eval: {gates: [\n", "not valid YAML (line 2"),
                                          ("eval: strict\n", "eval: must be a mapping")])
def test_eval_recipe_that_is_not_a_mapping_is_refused(tmp_path, gguf, text, needle):
    """Read as 'no gates', such a recipe let every eval pass."""
    _, evals = toy_data(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text)
    one_line_error(invoke("eval", gguf, "--data", evals, "-o", tmp_path / "out", "--recipe", recipe), needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.hostile
def test_a_device_as_eval_data_is_named_as_such(tmp_path, gguf):
    one_line_error(invoke("eval", gguf, "--data", "/dev/null", "-o", tmp_path / "out"), "not a regular file")


@pytest.mark.hostile
def test_report_json_is_still_replaced_by_a_new_eval(tmp_path, gguf):
    """The refusals above do not stop the ordinary rerun into an earlier eval folder."""
    _, evals = toy_data(tmp_path / "data")
    out = tmp_path / "out"
    for _ in range(2):
        result = invoke("eval", gguf, "--data", evals, "-o", out, "--ctx", "256", "--max-tokens", "2", "--no-speed")
        assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["n"] == 4


@pytest.mark.hostile
def test_a_lora_adapter_gguf_as_the_model_and_a_model_as_an_adapter_are_named(tmp_path, gguf):
    """An adapter GGUF given as the model was 'llama.cpp could not load it ... this llama-cpp-python build'."""
    pytest.importorskip("peft")
    from convert.lora import convert_lora
    from tests.test_merge import make_adapter

    model = build_model("llama")
    adapter, _, _ = make_adapter(model, tmp_path / "adapter")
    adapter_gguf = convert_lora(adapter, tmp_path / "adapter.gguf", base_dir=model)
    _, evals = toy_data(tmp_path / "data")
    for args, needle in [([adapter_gguf], "a LoRA adapter GGUF, not a model"),
                         ([gguf, "--baseline", adapter_gguf], "a LoRA adapter GGUF, not a model"),
                         ([gguf, "--adapter", f"sql={gguf}"], "a model GGUF, not a LoRA adapter")]:
        one_line_error(invoke("eval", *args, "--data", evals, "-o", tmp_path / "out", "--ctx", "256"), needle)
        assert not (tmp_path / "out").exists()


EVAL_FOLDERS = [
    ({}, None),
    ({".report.json.99999999-abcd.edgeft-tmp": "{"}, None),
    ({"report.json": "{}", "notes.txt": "an earlier eval's"}, None),  # replaced whole, as before
    ({"precious.txt": "mine"}, "holds precious.txt and no report.json"),
    ({"report.md": "# mine"}, "holds report.md and no report.json"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", EVAL_FOLDERS)
def test_eval_replaces_only_an_eval_folder(tmp_path, gguf, files, needle):
    _, evals = toy_data(tmp_path / "data")
    out = _folder(tmp_path / "eval", files)
    before = tree_state(out)
    result = invoke("eval", gguf, "--data", evals, "-o", out, "--ctx", "256", "--max-tokens", "2", "--no-speed")
    if needle is None:
        assert result.exit_code == 0, result.output
        assert json.loads((out / "report.json").read_text())["n"] == 4 and not (out / "notes.txt").exists()
    else:
        one_line_error(result, f"{out}: exists and is not an edgeft eval report folder", needle,
                       "choose another -o or empty it yourself")
        assert tree_state(out) == before


# ---- what cannot be scored is refused before any generation; a failed check is a failed gate -----------------------

def _conversations(pairs, system=None):
    lead = [{"role": "system", "content": system}] if system else []
    return "".join(json.dumps({"messages": lead + [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
                   + "\n" for q, a in pairs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile-eval")
    model = convert_model(build_model("llama"), folder / "model.gguf", outtype="f16")
    db = folder / "shop.sqlite"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE orders (id INTEGER, total REAL)")
        connection.executemany("INSERT INTO orders VALUES (?, ?)", [(1, 9.5), (2, 20.0)])
    eval_path = folder / "eval.jsonl"
    eval_path.write_text(_conversations([("How many orders?", "SELECT COUNT(*) FROM orders"),
                                         ("Biggest order?", "SELECT MAX(total) FROM orders")]))
    return {"folder": folder, "model": model, "db": db, "eval": eval_path}


def _eval(setup, tmp_path, data_text: str | None, *extra):
    data = setup["eval"]
    if data_text is not None:
        data = tmp_path / "eval.jsonl"
        data.write_text(data_text)
    out = tmp_path / "out"
    before = tree_state(setup["folder"], data)
    result = invoke("eval", setup["model"], "--data", data, "-o", out, "--no-speed", "--max-tokens", "4",
                    "--ctx", "256", "--threads", "1", *extra)
    return result, out, lambda: tree_state(setup["folder"], data) == before


@pytest.mark.hostile
def test_sql_gold_that_fails_everywhere_is_refused_not_passed(setup, tmp_path):
    text = _conversations([("How many orders?", "SELECT COUNT(*) FROM order_lines"),
                           ("Biggest order?", "SELEKT MAX(total) FROM orders")])
    result, out, untouched = _eval(setup, tmp_path, text, "--metric", f"sql-exec:{setup['db']}")
    line = one_line_error(result, "eval.jsonl:1:", "gold SQL fails", "no such table: order_lines",
                          "2 of 2 eval examples cannot be scored")
    assert "fix or remove them" in line
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_one_failing_gold_query_is_named_with_its_line(setup, tmp_path):
    text = _conversations([("How many orders?", "SELECT COUNT(*) FROM orders"),
                           ("Biggest order?", "SELECT MAX(totl) FROM orders")])
    result, out, untouched = _eval(setup, tmp_path, text, "--metric", f"sql-exec:{setup['db']}")
    one_line_error(result, "eval.jsonl:2:", "no such column: totl", "1 of 2")
    assert not out.exists() and untouched()


@pytest.mark.hostile
@pytest.mark.parametrize("metric", ["exact", "normalized", "regex:(\\d+)"])
def test_empty_gold_is_refused(setup, tmp_path, metric):
    text = _conversations([("How many orders?", "2"), ("Biggest order?", "   ")])
    result, out, untouched = _eval(setup, tmp_path, text, "--metric", metric)
    one_line_error(result, "eval.jsonl:2:", "the gold answer is empty", "1 of 2")
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_gold_that_is_not_json_is_refused_before_generation(setup, tmp_path):
    text = _conversations([("Say hi in JSON.", '{"hi": 1}'), ("Again.", "{hi: 1}")])
    result, out, untouched = _eval(setup, tmp_path, text, "--metric", "json-match")
    one_line_error(result, "eval.jsonl:2:", "not JSON", "1 of 2")
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_prompt_longer_than_the_context_is_refused_not_cut(setup, tmp_path):
    long_question = "Tell me about the orders table and every order in it. " * 20
    text = _conversations([("How many orders?", "2"), (long_question, "2")], system="Answer with a number.")
    result, out, untouched = _eval(setup, tmp_path, text, "--ctx", "128")
    one_line_error(result, "eval.jsonl:2:", "fine-tune prompt is", "--ctx 128", "1 of 2 prompts do not fit",
                   "raise --ctx")
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_baseline_prompt_with_shots_that_does_not_fit_is_refused(setup, tmp_path):
    """The baseline's prompt is the longer one (system prompt + shots): it is checked with its own tokenizer."""
    train = tmp_path / "train.jsonl"
    train.write_text(_conversations([("Example question number %d about the orders table?" % i, "SELECT 1")
                                     for i in range(6)]))
    result, out, untouched = _eval(setup, tmp_path, None, "--baseline", setup["model"], "--shots", "6",
                                   "--shots-from", train, "--ctx", "96")
    one_line_error(result, "eval.jsonl:1:", "baseline prompt is", "--ctx 96")
    assert not out.exists() and untouched()


@pytest.mark.hostile
@pytest.mark.parametrize("option, value, needle", [
    ("--limit", "0", "--limit 0: must be at least 1"),
    ("--limit", "-3", "--limit -3: must be at least 1"),
    ("--ctx", "0", "--ctx 0: must be at least 1"),
    ("--ctx", "-5", "--ctx -5: must be at least 1"),
    ("--ctx", "4", "leaves no room for an answer in --ctx 4"),
    ("--max-tokens", "0", "--max-tokens 0: must be at least 1"),
    ("--threads", "0", "--threads 0: must be at least 1"),
    ("--shots", "-1", "--shots -1: must be 0 or more"),
])
def test_numbers_that_make_no_sense_are_refused(setup, tmp_path, option, value, needle):
    result, out, untouched = _eval(setup, tmp_path, None, option, value)
    line = one_line_error(result, needle)
    assert "architecture" not in line  # a bad --ctx is not the model's fault
    assert not out.exists() and untouched()


# The ladder's settings: without the base that climbs it they were ignored (exit 0, as if the rungs had run); with
# it, 0 timed requests printed '— ms' and a traffic of -5, nan or inf printed 'at -5 requests a day, -0 tokens'.
LADDER_SETTINGS = [
    (False, ["--shots", "2"], "--shots needs --baseline"),
    (False, ["--shots-from", "{eval}"], "--shots-from needs --baseline"),
    (True, ["--shots-from", "{eval}"], "--shots-from needs --shots K (1 or more)"),
    (True, ["--latency-samples", "0"], "--latency-samples 0: must be at least 1"),
    (True, ["--latency-samples", "-3"], "--latency-samples -3: must be at least 1"),
    (True, ["--requests-per-day", "-5"], "--requests-per-day -5.0: must be a number of requests a day above 0"),
    (True, ["--requests-per-day", "0"], "--requests-per-day 0.0: must be"),
    (True, ["--requests-per-day", "nan"], "--requests-per-day nan: must be"),
    (True, ["--requests-per-day", "inf"], "--requests-per-day inf: must be"),
    (True, ["--recipe", "{folder}/rpd.yaml"], "rpd.yaml: eval.requests_per_day 'lots': must be a number"),
    # Found in the next sweep: read by nothing, exit 0.
    (False, ["--system", "Answer in SQL."], "--system needs --baseline"),
    (False, ["--context-k", "5"], "--context-k 5 needs --context"),
    (True, ["--context-k", "5"], "--context-k 5 needs --context"),
    (True, ["--context-k", "0", "--context", "{eval}"], "--context-k 0: must be at least 1"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("with_baseline, args, needle", LADDER_SETTINGS)
def test_ladder_settings_that_make_no_sense_are_refused(setup, tmp_path, with_baseline, args, needle):
    (tmp_path / "rpd.yaml").write_text("eval:\n  requests_per_day: lots\n")
    args = [arg.format(eval=setup["eval"], folder=tmp_path) for arg in args]
    baseline = ["--baseline", setup["model"]] if with_baseline else []
    result, out, untouched = _eval(setup, tmp_path, None, *baseline, *args)
    one_line_error(result, needle)
    assert not out.exists() and untouched()


# The ladder's and the probe's side files, hostile: each was a traceback (UnicodeDecodeError, AttributeError).
BINARY = b'{"text": "caf\xe9"}\n'


SIDE_FILES = [
    ("--context", BINARY, "side.jsonl:1: not UTF-8: byte 0xe9 at column 14"),
    ("--choices", BINARY, "side.jsonl:1: not UTF-8: byte 0xe9 at column 14"),
    ("--choices", b"[1, 2]\n", 'side.jsonl:1: expected {"question": str'),
    ("--rubric", b"\xff rubric\n", "--rubric {side}: not UTF-8 text (byte 0xff at byte 0)"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("option, content, needle", SIDE_FILES)
def test_side_files_that_are_not_text_are_one_line(setup, tmp_path, option, content, needle):
    side = tmp_path / "side.jsonl"
    side.write_bytes(content)
    extra = {"--context": ["--baseline", setup["model"]], "--rubric": ["--metric", f"judge:{setup['model']}"]}
    result, out, untouched = _eval(setup, tmp_path, None, *extra.get(option, []), option, side)
    one_line_error(result, needle.replace("{side}", str(side)))
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_a_rubric_without_the_judge_metric_is_refused(setup, tmp_path):
    """It was read by nothing, and the eval passed as if the answers had been judged against it."""
    rubric = tmp_path / "rubric.txt"
    rubric.write_text("Grade strictly.")
    result, out, untouched = _eval(setup, tmp_path, None, "--rubric", rubric)
    one_line_error(result, "--rubric is read by the judge metric only, not --metric exact")
    assert not out.exists() and untouched()


@pytest.mark.hostile
def test_limit_evaluates_exactly_that_many(setup, tmp_path):
    result, out, _ = _eval(setup, tmp_path, None, "--limit", "1")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["n"] == 1


@pytest.mark.hostile
def test_hf_parity_failure_is_a_failed_gate_on_the_console_and_in_the_report(setup, tmp_path):
    """The llama GGUF checked against another model's folder (Qwen2, ChatML): every conversation differs."""
    pytest.importorskip("transformers")
    result, out, untouched = _eval(setup, tmp_path, None, "--hf", build_model("qwen2"))
    line = error_line(result, "gate failed: max_hf_mismatches", code=3)
    assert "report.md" in line
    assert any("max_hf_mismatches: 2" in shown and "FAIL" in shown for shown in shown_lines(result.output))
    report = json.loads((out / "report.json").read_text())
    assert not report["passed"] and report["failed_gates"] == ["max_hf_mismatches"]
    assert report["parity"]["mismatched"] == 2
    assert "Gates failed: max_hf_mismatches" in (out / "report.md").read_text()
    named = [shown for shown in shown_lines(result.output) if shown.startswith("HF parity: ")]
    assert named == [f"HF parity: {report['parity']['first']}"] and "'conversation 0'" in named[0]
    assert f"First mismatch: {report['parity']['first']}" in (out / "report.md").read_text()
    assert untouched()


@pytest.mark.hostile
def test_hf_parity_that_holds_passes(setup, tmp_path):
    pytest.importorskip("transformers")
    result, out, _ = _eval(setup, tmp_path, None, "--hf", build_model("llama"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["parity"]["mismatched"] == 0
    assert [row["gate"] for row in report["gates"]] == ["max_hf_mismatches"]


@pytest.mark.hostile
def test_a_context_the_machine_cannot_hold_is_refused_not_oom_killed(setup, tmp_path):
    """Without the check llama.cpp allocates the KV cache and the OOM killer ends the process without a word."""
    result, out, untouched = _eval(setup, tmp_path, None, "--ctx", "2000000000")
    one_line_error(result, "--ctx 2000000000:", "KV cache", "GiB of memory available", "lower --ctx")
    assert not out.exists() and untouched()
    one_line_error(invoke("chat", setup["model"], "--ctx", "2000000000"), "KV cache", "lower --ctx")


@pytest.mark.hostile
def test_a_recipe_setting_is_named_as_the_recipe_key_and_a_flag_as_the_flag(setup, tmp_path):
    (tmp_path / "r.yaml").write_text("eval:\n  requests_per_day: -5\n")
    result, out, untouched = _eval(setup, tmp_path, None, "--recipe", tmp_path / "r.yaml")
    one_line_error(result, f"--recipe {tmp_path / 'r.yaml'}: eval.requests_per_day -5: must be a number")
    result, out, untouched = _eval(setup, tmp_path, None, "--metric", "exactly")
    one_line_error(result, "--metric exactly: unknown metric")
    assert not out.exists() and untouched()
    one_line_error(invoke("bench", tmp_path / "none.gguf", "--repeat", "0"), "--repeat 0, -p 512, -n 128: --repeat")
    one_line_error(invoke("serve", tmp_path / "none.gguf", "--port", "70000"), "--port 70000: must be from 0 to 65535")


@pytest.mark.hostile
@pytest.mark.parametrize("threshold", ["nan", "-inf", "inf"])
def test_a_gate_threshold_that_cannot_decide_is_refused_before_generation(setup, tmp_path, threshold):
    """NaN failed every gate it was given to, -inf passed every one: both ran the whole eval first."""
    result, out, untouched = _eval(setup, tmp_path, None, "--baseline", setup["model"], "--min-gain", threshold)
    one_line_error(result, f"gate min_gain: threshold {float(threshold)!r} must be a finite number")
    assert not out.exists() and untouched()


@pytest.mark.hostile
@pytest.mark.parametrize("option, baseline", [("--probe", False), ("--choices", False), ("--context", True)])
def test_an_eval_input_that_is_a_pipe_is_one_line(setup, tmp_path, option, baseline):
    """--probe on a pipe waited for a writer for good; --choices and --context called it 'file not found'."""
    import os

    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    extra = ["--baseline", setup["model"]] if baseline else []
    result, out, untouched = _eval(setup, tmp_path, None, *extra, option, pipe)
    one_line_error(result, f"{option} {pipe}: not a regular file")
    assert not out.exists() and untouched()
