"""Hostile input, training and adapters: `train --resume` refuses another base, other data or a changed recipe, an output
folder that cannot be written is refused before the model loads, and an adapter never meets another base of the
same shape (merge, convert-lora) without a word. All refusals come before any model is loaded: loading is patched
to fail the test if it is reached."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from edgeft.fsutil import TEMP_TAG
from tests.factory import build_model
from tests.hostile import error_line, invoke, one_line_error, run, tree_state
from tests.test_hostile_outputs import full_disk  # noqa: F401  (fixture)
from tests.train_helpers import toy_data, write_recipe

pytest.importorskip("torch")
pytest.importorskip("peft")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step LoRA run (checkpoint at step 1) on the qwen2 fixture, run as a user runs it."""
    folder = tmp_path_factory.mktemp("hostile-train")
    base = build_model("qwen2")
    train, evals = toy_data(folder / "data")
    recipe = write_recipe(folder / "recipe.yaml", max_steps=2, save_every=1, method="lora")
    out = folder / "run"
    done = run("train", "--base", base, "--data", train, "--eval", evals, "--config", recipe, "-o", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return {"base": base, "train": train, "eval": evals, "recipe": recipe, "out": out, "stderr": done.stderr}


def _resume_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained["out"], out)
    return out


def _resume(trained, out, **changes):
    args = {"--base": trained["base"], "--data": trained["train"], "--eval": trained["eval"], **changes}
    flat = [str(part) for key, value in args.items() if value is not None for part in (key, value)]
    return invoke("train", *flat, "-o", out, "--resume")


def test_bitsandbytes_optional_kernel_notice_is_not_printed(trained):
    assert "gemm_4bit_forward" not in trained["stderr"] and "pip install kernels" not in trained["stderr"]
    plain = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True)
    if "gemm_4bit_forward" not in plain.stderr:
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes prints no notice here to drop")


def test_resume_with_another_base_of_the_same_shape_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    before = tree_state(out)
    other = build_model("qwen2", seed=1)
    one_line_error(_resume(trained, out, **{"--base": other}), "--resume", "is another model", "--overwrite")
    assert tree_state(out) == before


def test_resume_with_other_data_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    before = tree_state(out)
    changed = tmp_path / "train.jsonl"
    changed.write_text(trained["train"].read_text().replace("blue", "green"))
    one_line_error(_resume(trained, out, **{"--data": changed}), "--data", "differs", "--overwrite")
    assert tree_state(out) == before


def test_resume_with_other_eval_data_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    one_line_error(_resume(trained, out, **{"--eval": None}), "no --eval is given now")


def test_resume_with_a_changed_setting_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "--eval", trained["eval"],
                          "-o", out, "--resume", "--lr", "0.5"), "lr was 0.01", "is 0.5 now")


def test_resume_may_run_longer(trained, tmp_path):
    """What a resumed run may change is still accepted (how long it runs)."""
    out = _resume_copy(trained, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = out / f".adapter.{int(dead.stdout)}-0badc0de.{TEMP_TAG}"  # what a run SIGKILLed while saving leaves
    stale.mkdir()
    (stale / "adapter_model.safetensors").write_bytes(b"half")
    result = invoke("train", "--base", trained["base"], "--data", trained["train"], "--eval", trained["eval"],
                    "-o", out, "--resume", "--max-steps", "3")
    assert result.exit_code == 0, result.output
    assert "steps         3 of 3" in result.output
    assert not stale.exists()


def test_read_only_output_is_refused_before_the_model_loads(trained, tmp_path, no_model_load):
    from tests.test_hostile_outputs import _mount_tmpfs

    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "size=64k,ro")
    try:
        one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "-o", mount / "run",
                              "--config", trained["recipe"]), "read-only")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_output_under_proc_is_refused_before_the_model_loads(trained, no_model_load):
    one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "-o", "/proc/edgeft-run",
                          "--config", trained["recipe"]), "cannot write it")


def test_output_inside_the_base_is_refused(trained, tmp_path, no_model_load):
    base = tmp_path / "base"
    shutil.copytree(trained["base"], base)
    before = tree_state(base)
    one_line_error(invoke("train", "--base", base, "--data", trained["train"], "-o", base / "adapter",
                          "--config", trained["recipe"]), "inside the base model folder")
    assert tree_state(base) == before


def test_overwrite_of_a_folder_holding_the_data_is_refused(trained, tmp_path, no_model_load):
    work = tmp_path / "work"
    work.mkdir()
    data = work / "train.jsonl"
    shutil.copyfile(trained["train"], data)
    before = tree_state(work)
    one_line_error(invoke("train", "--base", trained["base"], "--data", data, "-o", work, "--overwrite",
                          "--config", trained["recipe"]), "holds the training data")
    assert tree_state(work) == before


# ---- adapter <-> base identity --------------------------------------------------------------------------------

def test_merge_into_another_base_of_the_same_shape_is_refused(trained, tmp_path):
    other = build_model("qwen2", seed=1)
    before = tree_state(trained["out"], other)
    one_line_error(invoke("merge", "--base", other, "--adapter", trained["out"], "-o", tmp_path / "merged"),
                   "trained on base", "is another model", "pass the base it was trained on")
    assert not (tmp_path / "merged").exists() and tree_state(trained["out"], other) == before


def test_convert_lora_against_another_base_of_the_same_shape_is_refused(trained, tmp_path):
    other = build_model("qwen2", seed=1)
    one_line_error(invoke("convert-lora", trained["out"], "-o", tmp_path / "a.gguf", "--base", other),
                   "is another model")
    assert not (tmp_path / "a.gguf").exists()


def test_the_same_base_in_another_folder_is_accepted(trained, tmp_path):
    """The recorded fingerprint, not the path, decides: a copied base is the same model."""
    copy = tmp_path / "base-copy"
    shutil.copytree(trained["base"], copy)
    result = invoke("merge", "--base", copy, "--adapter", trained["out"], "-o", tmp_path / "merged",
                    "--no-nf4-report")
    assert result.exit_code == 0, result.output
    record = json.loads((trained["out"] / "inputs.json").read_text())
    assert record["base"]["path"] == str(trained["base"])


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


def test_disk_full_during_training_is_one_line_and_leaves_no_half_folder(trained, full_disk):
    """The output folder can be created (a few KiB are free), then the disk fills during training: one line naming
    the folder (or the file in it that did not fit: with two pages free, run.json and recipe.yaml take them and
    inputs.json is the one), and the half folder (no checkpoint to resume from) is removed."""
    before = tree_state(full_disk)
    done = run("train", "--base", trained["base"], "--data", trained["train"], "--config", trained["recipe"],
               "-o", full_disk / "run")
    error_line(done, f"{full_disk / 'run'}", "cannot write it: the disk is full", "(nothing was written)")
    assert tree_state(full_disk) == before
