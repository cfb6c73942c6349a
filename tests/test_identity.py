"""edgeft/identity.py: an adapter never meets another base of the same shape (train --resume, merge, convert-lora)
without a word, and --resume refuses other data; the recorded fingerprint, not the path, decides."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.factory import build_model
from tests.hostile import invoke, one_line_error, tree_state
from tests.test_train_checkpoint import _resume, _resume_copy, trained  # noqa: F401  (trained: the fixture)

pytest.importorskip("torch")
pytest.importorskip("peft")

@pytest.mark.hostile
def test_resume_with_another_base_of_the_same_shape_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    before = tree_state(out)
    other = build_model("qwen2", seed=1)
    one_line_error(_resume(trained, out, **{"--base": other}), "--resume", "is another model", "--overwrite")
    assert tree_state(out) == before


@pytest.mark.hostile
def test_resume_with_other_data_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    before = tree_state(out)
    changed = tmp_path / "train.jsonl"
    changed.write_text(trained["train"].read_text().replace("blue", "green"))
    one_line_error(_resume(trained, out, **{"--data": changed}), "--data", "differs", "--overwrite")
    assert tree_state(out) == before


@pytest.mark.hostile
def test_resume_with_other_eval_data_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    one_line_error(_resume(trained, out, **{"--eval": None}), "no --eval is given now")


@pytest.mark.hostile
def test_merge_into_another_base_of_the_same_shape_is_refused(trained, tmp_path):
    other = build_model("qwen2", seed=1)
    before = tree_state(trained["out"], other)
    one_line_error(invoke("merge", "--base", other, "--adapter", trained["out"], "-o", tmp_path / "merged"),
                   "trained on base", "is another model", "pass the base it was trained on")
    assert not (tmp_path / "merged").exists() and tree_state(trained["out"], other) == before


@pytest.mark.hostile
def test_convert_lora_against_another_base_of_the_same_shape_is_refused(trained, tmp_path):
    other = build_model("qwen2", seed=1)
    one_line_error(invoke("convert-lora", trained["out"], "-o", tmp_path / "a.gguf", "--base", other),
                   "is another model")
    assert not (tmp_path / "a.gguf").exists()


@pytest.mark.hostile
def test_the_same_base_in_another_folder_is_accepted(trained, tmp_path):
    """The recorded fingerprint, not the path, decides: a copied base is the same model."""
    copy = tmp_path / "base-copy"
    shutil.copytree(trained["base"], copy)
    result = invoke("merge", "--base", copy, "--adapter", trained["out"], "-o", tmp_path / "merged",
                    "--no-nf4-report")
    assert result.exit_code == 0, result.output
    record = json.loads((trained["out"] / "inputs.json").read_text())
    assert record["base"]["path"] == str(trained["base"])


@pytest.mark.hostile
def test_peft_adapter_naming_its_base_is_checked_too(tmp_path):
    """An adapter saved by peft itself (no inputs.json) names its base folder in adapter_config.json."""
    from tests.test_merge import make_adapter

    base = build_model("llama")
    adapter, _, _ = make_adapter(base, tmp_path / "adapter", target_modules=["q_proj"])
    assert not (adapter / "inputs.json").exists()
    one_line_error(invoke("merge", "--base", build_model("llama", seed=1), "--adapter", adapter,
                          "-o", tmp_path / "merged"), "is another model")
    result = invoke("merge", "--base", base, "--adapter", adapter, "-o", tmp_path / "merged", "--no-nf4-report")
    assert result.exit_code == 0, result.output
