"""Issue 14, hostile cases found beyond the issue's list (each one mishandled before this change): outputs that
would replace or overwrite their own input in eval, data split, data sample and imatrix; an eval --recipe that is
a list or invalid YAML; a device as eval data."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.factory import build_model
from tests.hostile import invoke, one_line_error, tree_state
from tests.train_helpers import toy_data


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    pytest.importorskip("llama_cpp")
    from convert import convert_model

    return convert_model(build_model("llama"), tmp_path_factory.mktemp("extra") / "m.gguf", outtype="f16")


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


def test_split_into_the_folder_of_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(tmp_path / "data")
    one_line_error(invoke("data", "split", train, "-o", tmp_path / "data", "--overwrite"), "holds the input file")
    assert tree_state(tmp_path / "data") == before


def test_sample_over_its_input_is_refused(tmp_path):
    train, _ = toy_data(tmp_path / "data")
    before = tree_state(train)
    one_line_error(invoke("data", "sample", train, "-n", "2", "-o", train), "is the input file itself")
    assert tree_state(train) == before


@pytest.mark.parametrize("target", ["inside", "data"])
def test_imatrix_over_its_inputs_is_refused(tmp_path, target):
    pytest.importorskip("torch")
    model = tmp_path / "model"
    shutil.copytree(build_model("llama"), model)
    train, _ = toy_data(tmp_path / "data")
    out = model / "imatrix.gguf" if target == "inside" else train
    before = tree_state(model, train)
    one_line_error(invoke("imatrix", model, "--data", train, "-o", out), "write the output somewhere else")
    assert tree_state(model, train) == before


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


def test_a_device_as_eval_data_is_named_as_such(tmp_path, gguf):
    one_line_error(invoke("eval", gguf, "--data", "/dev/null", "-o", tmp_path / "out"), "not a regular file")


def test_report_json_is_still_replaced_by_a_new_eval(tmp_path, gguf):
    """The refusals above do not stop the ordinary rerun into an earlier eval folder."""
    _, evals = toy_data(tmp_path / "data")
    out = tmp_path / "out"
    for _ in range(2):
        result = invoke("eval", gguf, "--data", evals, "-o", out, "--ctx", "256", "--max-tokens", "2", "--no-speed")
        assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["n"] == 4
