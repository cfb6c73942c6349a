"""edgeft/train/checkpoint.py, the run folder of `edgeft train`: which folders --overwrite may replace, what --resume
accepts, and an output folder that cannot be written is refused before the model loads (loading is patched to fail
the test if it is reached) or, when the disk fills during training, leaves no half folder."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from convert.common.fsutil import TEMP_TAG
from tests.factory import build_model
from tests.hostile import _folder, error_line, invoke, one_line_error, run, tree_state
from tests.test_fsutil import full_disk  # noqa: F401  (fixture)
from tests.train_helpers import toy_data, write_recipe

pytest.importorskip("torch")
pytest.importorskip("peft")

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


@pytest.mark.hostile
def test_bitsandbytes_optional_kernel_notice_is_not_printed(trained):
    assert "gemm_4bit_forward" not in trained["stderr"] and "pip install kernels" not in trained["stderr"]
    plain = subprocess.run([sys.executable, "-c", "import bitsandbytes"], capture_output=True, text=True)
    if "gemm_4bit_forward" not in plain.stderr:
        pytest.skip("this CPU has no AVX512-BF16, so bitsandbytes prints no notice here to drop")


@pytest.mark.hostile
def test_resume_with_a_changed_setting_is_refused(trained, tmp_path, no_model_load):
    out = _resume_copy(trained, tmp_path)
    one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "--eval", trained["eval"],
                          "-o", out, "--resume", "--lr", "0.5"), "lr was 0.01", "is 0.5 now")


@pytest.mark.hostile
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


@pytest.mark.hostile
def test_read_only_output_is_refused_before_the_model_loads(trained, tmp_path, no_model_load):
    from tests.test_fsutil import _mount_tmpfs

    mount = tmp_path / "ro"
    _mount_tmpfs(mount, "size=64k,ro")
    try:
        one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "-o", mount / "run",
                              "--config", trained["recipe"]), "read-only")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.hostile
def test_output_under_proc_is_refused_before_the_model_loads(trained, no_model_load):
    one_line_error(invoke("train", "--base", trained["base"], "--data", trained["train"], "-o", "/proc/edgeft-run",
                          "--config", trained["recipe"]), "cannot write it")


@pytest.mark.hostile
def test_output_inside_the_base_is_refused(trained, tmp_path, no_model_load):
    base = tmp_path / "base"
    shutil.copytree(trained["base"], base)
    before = tree_state(base)
    one_line_error(invoke("train", "--base", base, "--data", trained["train"], "-o", base / "adapter",
                          "--config", trained["recipe"]), "inside the base model folder")
    assert tree_state(base) == before


@pytest.mark.hostile
def test_overwrite_of_a_folder_holding_the_data_is_refused(trained, tmp_path, no_model_load):
    work = tmp_path / "work"
    work.mkdir()
    data = work / "train.jsonl"
    shutil.copyfile(trained["train"], data)
    before = tree_state(work)
    one_line_error(invoke("train", "--base", trained["base"], "--data", data, "-o", work, "--overwrite",
                          "--config", trained["recipe"]), "holds the training data")
    assert tree_state(work) == before


@pytest.mark.hostile
def test_disk_full_during_training_is_one_line_and_leaves_no_half_folder(trained, full_disk):
    """The output folder can be created (a few KiB are free), then the disk fills during training: one line naming
    the folder (or the file in it that did not fit: with two pages free, run.json and recipe.yaml take them and
    inputs.json is the one), and the half folder (no checkpoint to resume from) is removed."""
    before = tree_state(full_disk)
    done = run("train", "--base", trained["base"], "--data", trained["train"], "--config", trained["recipe"],
               "-o", full_disk / "run")
    error_line(done, f"{full_disk / 'run'}", "cannot write it: the disk is full", "(nothing was written)")
    assert tree_state(full_disk) == before
