"""A run SIGKILLed before its first checkpoint, and the next `edgeft train` into the same folder.

What the kill leaves (found by killing one, below): run.json, recipe.yaml, inputs.json, metrics.jsonl with the
killed run's rows and, when an eval ran, checkpoints/best/; no step checkpoint, so --resume has nothing to start
from. The next run must say so in one line and point at --overwrite, never train into that folder as it is, and
--overwrite must replace only folders that are a run's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from convert.common.fsutil import is_empty_folder
from edgeft.train import checkpoint as ckpt
from tests.factory import build_model
from tests.train_helpers import ROOT, edgeft_env, toy_data, write_recipe

KILL_AT_STEP_3 = textwrap.dedent("""
    import os, signal, sys
    import edgeft.train.loop as loop

    real_step = loop.TrainRun.step

    def step(self, index):  # step 3 of a run whose first checkpoint would come at step 100
        if index == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, index)

    loop.TrainRun.step = step
    from edgeft.train import train
    base, data, evals, out, recipe = sys.argv[1:6]
    train(base, data, out, eval_path=evals, config=recipe, progress=False)
""")


def _one_line_error(args) -> str:
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_killed_before_its_first_checkpoint_is_named_and_replaced_only_on_request(tmp_path):
    pytest.importorskip("torch")
    from edgeft.train import train

    base = build_model("qwen2")
    data, evals = toy_data(tmp_path)
    recipe = write_recipe(tmp_path / "recipe.yaml", method="lora", eval_every=2, save_every=100, max_steps=4)
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP_3, str(base), str(data), str(evals), str(out),
                             str(recipe)], env=edgeft_env(), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert _tree(out) == ["checkpoints", "checkpoints/best", "checkpoints/best/state.json",
                          "checkpoints/best/trainable.safetensors", "inputs.json", "metrics.jsonl", "recipe.yaml",
                          "run.json"]
    assert ckpt.is_run_folder(out) and ckpt.run_folder_state(out) == "partial"
    left = _tree(out)

    args = ["--base", base, "--data", data, "--eval", evals, "--config", recipe, "-o", out]
    again = _one_line_error(args)
    assert "stopped before its first checkpoint" in again and "--overwrite" in again
    resumed = _one_line_error([*args, "--resume"])
    assert "no checkpoint" in resumed and "--overwrite" in resumed
    assert _tree(out) == left  # refusing touched nothing

    train(base, data, out, eval_path=evals, config=recipe, overwrite=True, progress=False)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # the new run's rows only, none of the killed's
    assert ckpt.run_folder_state(out) == "finished"
    finished = _one_line_error(args)
    assert "finished training run" in finished and "--overwrite" in finished


def test_overwrite_never_replaces_a_folder_that_is_not_a_run(tmp_path, no_model_load):
    """Without a flag, with --overwrite and with --resume: refused, the folder as it was (the CLI's one case)."""
    base = build_model("qwen2")
    data, _ = toy_data(tmp_path)
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    for flags in ([], ["--overwrite"], ["--resume"]):
        line = _one_line_error(["--base", base, "--data", data, "-o", out, *flags])
        assert "not empty and is not an edgeft training run" in line and "choose another -o" in line, flags
    assert _tree(out) == ["precious.txt"] and (out / "precious.txt").read_text() == "keep me"


def test_what_counts_as_a_run_folder(tmp_path):
    legacy = tmp_path / "legacy"  # written before run.json existed: recipe.yaml and inputs.json come first
    legacy.mkdir()
    (legacy / "recipe.yaml").write_text("r: 4\n")
    (legacy / "inputs.json").write_text("{}")
    assert ckpt.is_run_folder(legacy) and ckpt.run_folder_state(legacy) == "partial"
    (legacy / "recipe.yaml").unlink()
    assert not ckpt.is_run_folder(legacy)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "run.json").write_text('{"tool": "something else"}')
    assert not ckpt.is_run_folder(foreign)
    killed_while_marking = tmp_path / "marking"  # a kill while run.json itself was being written
    killed_while_marking.mkdir()
    (killed_while_marking / ".run.json.12345-0a1b2c3d.edgeft-tmp").write_text("{")
    assert is_empty_folder(killed_while_marking) and not is_empty_folder(foreign)
