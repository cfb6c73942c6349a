"""`make release` is `edgeft release`, which writes the stage table (edgeft/release/graph.py) as a makefile with the
release's paths and lets make run it: what the user did not give make comes from the recipe, a second run does
nothing, and a changed input reruns exactly the stages after it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convert.common.errors import EdgeftError
from edgeft.release import pipeline
from edgeft.release.graph import release_stages
from edgeft.release.settings import resolve_settings
from tests.hostile import ROOT, invoke, one_line_error


def make_release(tmp_path: Path, *variables: str, dry_run: bool = False) -> subprocess.CompletedProcess:
    """`make [-n] release VARIABLES` in the checkout, as a user types it (this interpreter, no install step)."""
    stamp = tmp_path / "installed"
    stamp.touch()
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MAKEFLAGS", None)
    command = ["make", "--no-print-directory", *(["-n"] if dry_run else []), "release", f"PY={sys.executable}",
               f"STAMP={stamp}", *variables]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=1800)


def would_run(output: str) -> list[str]:
    return re.findall(r" stage (\w+)$", output, re.M)


@pytest.fixture
def inputs(tmp_path) -> dict:
    base = tmp_path / "base"
    base.mkdir()
    for name in ("config.json", "model.safetensors"):
        (base / name).write_text("{}")
    data, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    data.write_text("{}\n")
    evals.write_text("{}\n")
    return {"base": base, "data": data, "eval": evals, "out": tmp_path / "out", "release": tmp_path / "rel"}


def _variables(inputs) -> list[str]:
    return [f"BASE={inputs['base']}", f"DATA={inputs['data']}", f"EVAL={inputs['eval']}", f"OUT={inputs['out']}",
            f"RELEASE_DIR={inputs['release']}"]


def test_the_recipes_quant_and_name_are_what_make_ships(inputs, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nquant: Q5_K_M\n")
    made = make_release(tmp_path, *_variables(inputs), f"RECIPE={recipe}", dry_run=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert would_run(made.stdout)[-1] == "publish" and "--quant Q5_K_M --name x" in made.stdout
    rules = (inputs["out"] / "x" / "stages.mk").read_text()
    assert f"{inputs['release'] / 'x' / 'manifest.json'}: " in rules
    assert f"{inputs['out'] / 'x' / 'model-Q5_K_M.gguf'}: " in rules and "Q4_K_M" not in rules


def test_quant_and_name_given_to_make_win_over_the_recipe(inputs, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nquant: Q5_K_M\n")
    made = make_release(tmp_path, *_variables(inputs), f"RECIPE={recipe}", "QUANT=q8_0", "NAME=y", dry_run=True)
    assert made.returncode == 0, made.stdout + made.stderr
    assert "--quant Q8_0 --name y" in made.stdout and not (inputs["out"] / "x").exists()
    assert f"{inputs['out'] / 'y' / 'model-Q8_0.gguf'}: " in (inputs["out"] / "y" / "stages.mk").read_text()


def _settings(inputs, recipe=None, quant=None):
    """The settings of the release the fixture's inputs make."""
    return resolve_settings(base=inputs["base"], data=inputs["data"], eval_path=inputs["eval"], out=inputs["out"],
                            release_root=inputs["release"], recipe_path=recipe, quant=quant)


def _finished(inputs, recipe=None, quant=None):
    """A release whose every stage ran, in the table's order, after its inputs were written."""
    s = _settings(inputs, recipe, quant)
    makefile = pipeline.write_makefile(s)
    start = time.time() - 1000
    for path in [inputs["data"], inputs["eval"], *inputs["base"].iterdir(), *pipeline.stages.context_files(s)]:
        os.utime(path, (start, start))
    for i, stage in enumerate(release_stages(s.quant), start=1):
        done = pipeline.target(stage, s)
        done.parent.mkdir(parents=True, exist_ok=True)
        if stage.always:
            pipeline.run_stage(stage.name, s)
        else:
            done.write_text("{}")
        os.utime(done, (start + i, start + i))
    return makefile


def _stages_make_would_run(makefile: Path) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "MAKEFLAGS"}
    made = subprocess.run(["make", "-n", "-f", str(makefile)], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stdout + made.stderr
    return would_run(made.stdout)


def test_a_second_run_does_nothing_and_touching_data_reruns_from_training(inputs):
    makefile = _finished(inputs)
    assert _stages_make_would_run(makefile) == []
    (inputs["base"] / "config.json").touch()
    assert "check" not in _stages_make_would_run(makefile)
    assert {"train", "base_imatrix", "base_gguf", "publish"} <= set(_stages_make_would_run(makefile))
    inputs["data"].touch()
    assert sorted(_stages_make_would_run(makefile)) == sorted(stage.name for stage in release_stages("Q4_K_M")
                                                              if not stage.always)


def _rewrite_settings(s) -> None:
    for stage in release_stages(s.quant):
        if stage.always:
            pipeline.run_stage(stage.name, s)


@pytest.mark.parametrize("quant", ["Q4_K_M", "auto"])
def test_a_changed_setting_reruns_what_reads_it(inputs, quant):
    makefile = _finished(inputs, quant=quant)
    s = _settings(inputs, quant=quant)
    every = {stage.name for stage in release_stages(s.quant) if not stage.always}
    _rewrite_settings(s)
    assert _stages_make_would_run(makefile) == []  # the same settings: no settings file is rewritten
    s.recipe["eval"].setdefault("gates", {})["min_gain"] = 30  # read by the eval and the card only: no retraining
    _rewrite_settings(s)
    assert set(_stages_make_would_run(makefile)) == {"check", "eval", "publish"} | ({"quants"} & every) \
        | ({"model", "base_gguf", "bench"} if s.quant == "AUTO" else set())  # auto: the sweep chooses the file
    _finished(inputs, quant=quant)
    s.recipe["train"]["lr"] = 3e-4  # a fine-tune's setting: the base's imatrix and GGUF (and its ladder) stay
    _rewrite_settings(s)
    assert set(_stages_make_would_run(makefile)) == every - {"base_imatrix"} - \
        ({"base_gguf"} if s.quant != "AUTO" else set())
    s.recipe["eval"]["imatrix_examples"] = 8  # read by the base's imatrix too: everything reruns
    _rewrite_settings(s)
    assert set(_stages_make_would_run(makefile)) == every


def test_training_waits_for_the_data_check_without_being_made_stale_by_it(inputs):
    """make's order-only prerequisite: a check that reran (any setting) does not retrain; a missing one runs, and
    only it."""
    makefile = _finished(inputs)
    s = _settings(inputs)
    rule = next(line for line in makefile.read_text().splitlines() if line.startswith(f"{s.path('train')}/"))
    assert rule.endswith(f" | {s.path('check')}")
    os.utime(s.path("check"))  # newer than the adapter
    assert "train" not in _stages_make_would_run(makefile)
    s.path("check").unlink()
    assert _stages_make_would_run(makefile) == ["check"]


def test_the_recipes_context_corpus_is_an_input_of_the_eval(inputs, tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "x"}\n')
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"eval:\n  context: {docs}\n")
    makefile = _finished(inputs, recipe)
    assert _stages_make_would_run(makefile) == []
    docs.touch()
    assert _stages_make_would_run(makefile) == ["eval", "publish"]


def test_quant_auto_sweeps_before_the_model_and_the_base_and_a_fixed_quant_does_not(inputs):
    makefile = _finished(inputs, quant="auto")
    assert _stages_make_would_run(makefile) == []
    work = inputs["out"] / inputs["base"].name
    rules = {line.split(": ")[0]: line.split(": ")[1].split() for line in makefile.read_text().splitlines()
             if ": " in line and not line.startswith(("\t", "#", "STAGE", "."))}
    sweep = str(work / "quants" / "quants.json")
    assert {str(work / "model-F16.gguf"), str(work / "imatrix.gguf"), str(inputs["eval"])} <= set(rules[sweep])
    assert sweep in rules[str(work / "model-AUTO.gguf")] and sweep in rules[str(work / "base-AUTO.gguf")]
    inputs["eval"].touch()  # a new eval set: a new choice, and what follows from it
    assert {"quants", "model", "base_gguf", "eval", "bench", "publish"} <= set(_stages_make_would_run(makefile))
    fixed = pipeline.makefile(_settings(inputs, quant="Q4_K_M"))
    assert "$(STAGE) quants" not in fixed and "quants.json" not in fixed


def test_the_demo_generates_its_data_through_make():
    rules = pipeline.makefile(resolve_settings())
    assert re.search(r"^\.cache/demo/data/train\.jsonl .*&: .*/edgeft/demo/sql_task\.py", rules, re.M)


def test_a_path_make_cannot_name_is_refused_in_one_line(inputs, tmp_path):
    spaced = tmp_path / "my base"
    inputs["base"].rename(spaced)
    one_line_error(invoke("release", "--base", spaced, "--data", inputs["data"], "--eval", inputs["eval"],
                          "--out", inputs["out"], "--release-dir", inputs["release"], "--name", "x"),
                   "my base", "make cannot name a file with spaces")
    assert not inputs["out"].exists()


def test_a_failed_stage_stops_the_release_with_make_s_status(inputs):
    inputs["data"].write_text("not json\n")
    result = invoke("release", "--base", inputs["base"], "--data", inputs["data"], "--eval", inputs["eval"],
                    "--out", inputs["out"], "--release-dir", inputs["release"])
    assert result.exit_code == 2 and not inputs["release"].exists()


def test_without_make_the_release_says_so_in_one_line(inputs, monkeypatch):
    monkeypatch.setattr(pipeline.shutil, "which", lambda name: None)
    one_line_error(invoke("release", "--base", inputs["base"], "--data", inputs["data"], "--eval", inputs["eval"],
                          "--out", inputs["out"], "--release-dir", inputs["release"]),
                   "runs its stages with GNU make, which is not installed")
    assert not inputs["release"].exists()


def test_stage_threads_follow_the_environment_before_the_load_average(monkeypatch):
    """EDGEFT_THREADS, then OpenMP's OMP_NUM_THREADS, then the free cores, for torch and llama.cpp alike: two jobs
    started together both see an idle box, and torch threads fighting for a core measured 10x slower per step."""
    import torch

    from edgeft.release import stages

    monkeypatch.setattr(stages, "free_cores", lambda: 2)
    before = torch.get_num_threads()
    try:
        for edgeft_threads, omp, expected in ((None, None, 2), (None, "1", 1), (None, "1,1", 1), ("2", "1", 2)):
            for name, value in (("EDGEFT_THREADS", edgeft_threads), ("OMP_NUM_THREADS", omp)):
                if value is None:
                    monkeypatch.delenv(name, raising=False)
                else:
                    monkeypatch.setenv(name, value)
            assert stages._torch_threads() == expected == torch.get_num_threads() == stages.stage_threads()
        monkeypatch.setenv("EDGEFT_THREADS", "two")
        with pytest.raises(EdgeftError, match="EDGEFT_THREADS='two': must be a whole number"):
            stages._torch_threads()
    finally:
        torch.set_num_threads(before)


def test_a_release_made_before_train_settings_existed_does_not_retrain(inputs):
    """Upgrading edgeft: the first train-settings.json takes settings.json's time, which says when a training
    setting last changed; so a finished release stays finished, and a changed setting still reruns training."""
    makefile = _finished(inputs)
    s = _settings(inputs)
    s.path("train_settings").unlink()
    _rewrite_settings(s)
    assert _stages_make_would_run(makefile) == []
    s.path("train_settings").unlink()
    s.recipe["train"]["lr"] = 3e-4
    _rewrite_settings(s)
    assert "train" in _stages_make_would_run(makefile)


def test_a_stage_that_copies_an_older_output_is_done_now(inputs, monkeypatch):
    """A sweep release's train stage copies the winning trial's folder, file times and all: without the stage
    marking its output done now, make would find training stale on every later run."""
    makefile = _finished(inputs)
    s = _settings(inputs)
    marker = pipeline.target(pipeline.STAGE_BY_NAME["train"], s)

    def copy_an_old_run(settings):
        marker.write_text("{}")
        os.utime(marker, (1, 1))

    monkeypatch.setattr(pipeline.stages, "stage_train", copy_an_old_run)
    pipeline.run_stage("train", s)
    assert marker.stat().st_mtime > s.path("train_settings").stat().st_mtime - 1
    assert "train" not in _stages_make_would_run(makefile)


def test_a_failed_data_check_points_only_at_what_exists(inputs, capsys):
    """A failed check writes no data-check.json (make deletes a failed stage's output too), so its message names
    the command that lists every finding, not the file."""
    inputs["data"].write_text("not json\n")
    s = _settings(inputs)
    with pytest.raises(EdgeftError, match="data check found"):
        pipeline.stages.stage_check(s)
    printed = capsys.readouterr().out
    assert "edgeft data check" in printed and str(s.path("check")) not in printed and not s.path("check").exists()
