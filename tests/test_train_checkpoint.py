"""edgeft/train/checkpoint.py: which output folders `edgeft train --overwrite` may replace."""

from __future__ import annotations

import pytest

from tests.factory import build_model
from tests.hostile import _folder, invoke, one_line_error, tree_state
from tests.train_helpers import toy_data

# `edgeft train` and `edgeft eval -o` decide by the same rule: a folder is theirs when missing, empty (a killed
# write's temporaries aside) or stamped (run.json written by edgeft train, or an older run's recipe.yaml +
# inputs.json; report.json). Neither goes by output names: an adapter from elsewhere holds only names a run writes.
TRAIN_FOLDERS = [
    ({}, None),
    ({".run.json.99999999-abcd.edgeft-tmp": "{"}, None),
    ({"run.json": '{"tool": "edgeft train"}', "metrics.jsonl": "", "notes.txt": "an earlier run's"}, None),
    ({"recipe.yaml": "r: 4\n", "inputs.json": "{}", "loss.png": "x"}, None),  # a run from before run.json
    ({"precious.txt": "mine"}, "holds precious.txt and no run.json"),
    ({"run.json": '{"tool": "something else"}'}, "its run.json is not the marker edgeft train writes"),
    ({"inputs.json": "{}"}, "holds inputs.json and no run.json"),
    ({"adapter_config.json": "{}", "adapter_model.safetensors": "x"}, "holds adapter_config.json and no run.json"),
]


@pytest.mark.hostile
@pytest.mark.parametrize("files, needle", TRAIN_FOLDERS)
def test_train_overwrite_replaces_only_a_run(tmp_path, no_model_load, files, needle):
    base = build_model("qwen2")
    train, _ = toy_data(tmp_path / "data")
    out = _folder(tmp_path / "run", files)
    before = tree_state(out)
    result = invoke("train", "--base", base, "--data", train, "-o", out, "--method", "lora", "--overwrite")
    if needle is None:  # accepted: it went on as far as loading the model, which no_model_load stops
        assert isinstance(result.exception, AssertionError) and "was loaded" in str(result.exception), result.output
    else:
        one_line_error(result, f"{out}: exists and is not empty and is not an edgeft training run", needle,
                       "choose another -o")
        assert tree_state(out) == before
