"""`edgeft train` bad input: one clear line each, and nothing is loaded before the inputs are known good."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeft.cli import main
from tests.factory import build_model
from tests.train_helpers import toy_data, write_jsonl


def _run(args):
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_help_has_an_example():
    result = CliRunner().invoke(main, ["train", "--help"])
    assert result.exit_code == 0 and "Example:" in result.output and "--resume" in result.output


def test_missing_base(tmp_path, no_model_load):
    train, _ = toy_data(tmp_path)
    line = _run(["--base", tmp_path / "nope", "--data", train, "-o", tmp_path / "out"])
    assert "nope: base model folder not found" in line


def test_invalid_data_shows_the_check_line(tmp_path, no_model_load):
    base = build_model("qwen2")
    rows = [{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "only a question"}]}]
    bad = write_jsonl(tmp_path / "train.jsonl", rows)
    with open(bad, "a") as handle:
        handle.write("{not json\n")
    line = _run(["--base", base, "--data", bad, "-o", tmp_path / "out"])
    assert "data check failed" in line and "train.jsonl:2" in line and "(+1 more)" in line
    assert not (tmp_path / "out").exists()


def test_resume_without_checkpoint(tmp_path, no_model_load):
    base = build_model("qwen2")
    train, _ = toy_data(tmp_path)
    line = _run(["--base", base, "--data", train, "-o", tmp_path / "out", "--resume"])
    assert "no checkpoint to resume from" in line


def test_qlora_with_unusable_bitsandbytes(tmp_path, monkeypatch, no_model_load):
    import edgeft.train

    monkeypatch.setattr(edgeft.train, "bitsandbytes_problem", lambda: "RuntimeError: no 4-bit kernel for this CPU")
    base = build_model("qwen2")
    train, _ = toy_data(tmp_path)
    line = _run(["--base", base, "--data", train, "-o", tmp_path / "out", "--method", "qlora"])
    assert "--method qlora needs bitsandbytes 4-bit" in line and "no 4-bit kernel" in line and "--method lora" in line


def test_bitsandbytes_probe_runs_here():
    from edgeft.train.model import bitsandbytes_problem

    assert bitsandbytes_problem() is None


def test_bad_recipe_key(tmp_path, no_model_load):
    base = build_model("qwen2")
    train, _ = toy_data(tmp_path)
    config = tmp_path / "r.yaml"
    config.write_text(json.dumps({"learning_rate": 0.1}))
    line = _run(["--base", base, "--data", train, "-o", tmp_path / "out", "--config", config])
    assert "unknown recipe setting 'learning_rate'" in line


def test_train_command_and_recipe_import_no_torch():
    import subprocess
    import sys

    from tests.train_helpers import ROOT, edgeft_env

    code = ("import sys, edgeft.commands.train, edgeft.train, edgeft.train.recipe, edgeft.train.checkpoint, "
            "edgeft.train.loop; "
            "assert 'torch' not in sys.modules, 'torch imported at module level'")
    done = subprocess.run([sys.executable, "-c", code], env=edgeft_env(), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_method_dpo_points_at_the_objective(tmp_path):
    result = CliRunner().invoke(main, ["train", "--base", "b", "--data", "d", "-o", str(tmp_path / "out"),
                                       "--method", "dpo"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "'dpo' is not one of qlora, lora (dpo is an objective: --objective dpo)" in lines[0]
    assert not (tmp_path / "out").exists()
