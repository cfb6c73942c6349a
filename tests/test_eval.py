"""edgeft eval, the command: what it refuses (a recipe that is no mapping, a device as data, an adapter GGUF as the
model) and which output folders it may replace."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.factory import build_model
from tests.hostile import _folder, invoke, one_line_error, tree_state
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
