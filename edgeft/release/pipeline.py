"""The release as a graph of stages: the one table of which stage reads what and writes what.

`run_pipeline` (what `edgeft release` runs) reruns a stage only when its output is missing or older than one of
its inputs; `release.mk` gives each stage a make target with the same prerequisites, and tests/test_release_mk.py
checks the two against each other through `make_rules`, so neither can drift.

Example:
    run_pipeline(resolve_settings(recipe_path="edgeft/demo/recipe.yaml"))
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgeft.errors import EdgeftError
from edgeft.release import stages
from edgeft.release.settings import DEMO_DIR, Settings
from runtime.report import EVAL_FILES

# Inputs that are not a stage's output: the training data, the eval data, the base model's files, and the
# recipe's context corpus (which only the recipe names, so make learns it from recipe-inputs.mk).
DATA, EVAL, BASE, CONTEXT = "<data>", "<eval>", "<base>", "<context>"  # not stage names: "eval" is one


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Settings], None]
    inputs: tuple[str, ...]  # names of other stages (their outputs), or DATA / EVAL / BASE / CONTEXT
    output: str  # LAYOUT key; for folders, `marker` is the file inside that marks completion
    marker: str | None = None
    optional: bool = False  # skipped (with a note) when its module is not installed
    always: bool = False    # run every time (it rewrites its output only when the content changes)


STAGES = [
    Stage("settings", stages.stage_settings, (), "settings", always=True),
    Stage("check", stages.stage_check, ("settings", DATA, EVAL), "check"),
    Stage("train", stages.stage_train, ("check", DATA, EVAL, BASE), "adapter", "adapter_config.json"),
    Stage("merge", stages.stage_merge, ("train",), "merged", "config.json"),
    Stage("imatrix", stages.stage_imatrix, ("merge", DATA), "imatrix"),
    Stage("f16", stages.stage_f16, ("merge",), "f16"),
    Stage("model", stages.stage_model, ("merge", "imatrix"), "model"),
    Stage("base_imatrix", stages.stage_base_imatrix, ("settings", BASE, DATA), "base_imatrix"),
    Stage("base_gguf", stages.stage_base_gguf, (BASE, "base_imatrix"), "base_gguf"),
    Stage("lora", stages.stage_lora, ("train",), "lora", optional=True),
    Stage("eval", stages.stage_eval, ("model", "base_gguf", "f16", EVAL, DATA, CONTEXT), "eval", EVAL_FILES["report"]),
    Stage("bench", stages.stage_bench, ("model", "base_gguf"), "bench"),
    Stage("publish", stages.stage_publish, ("eval", "bench", "model", "lora"), "publish"),
]
STAGE_BY_NAME = {stage.name: stage for stage in STAGES}


def stage_output(stage: Stage, s: Settings) -> Path:
    if stage.name == "publish":
        return s.release_root / s.name / "manifest.json"
    out = s.path(stage.output)
    return out / stage.marker if stage.marker else out


def _base_files(s: Settings) -> list[Path]:
    return sorted(p for p in s.base.iterdir() if p.is_file()) if s.base.is_dir() else [s.base / "config.json"]


def stage_inputs(stage: Stage, s: Settings) -> list[Path]:
    """The files `stage` reads; an optional stage's output counts only where that stage ran (publish and lora)."""
    sources = {DATA: lambda: [s.data], EVAL: lambda: [s.eval], BASE: lambda: _base_files(s),
               CONTEXT: lambda: stages.context_files(s)}
    paths: list[Path] = []
    for name in stage.inputs:
        if name in sources:
            paths += sources[name]()
        else:
            paths.append(stage_output(STAGE_BY_NAME[name], s))
    return paths


def make_rules() -> dict[str, tuple[str, list[str]]]:
    """Per stage, the make target and prerequisites release.mk must declare, in release.mk's variables: the work
    folder $(W), $(QUANT), the base's files $(R_BASE_FILES)...; the context corpus comes from recipe-inputs.mk."""
    symbolic = Settings(base=Path("$(R_BASE)"), data=Path("$(R_DATA)"), eval=Path("$(R_EVAL)"), quant="$(QUANT)",
                        name="$(R_NAME)", out=Path("$(W)"), release_root=Path("$(RELEASE_DIR)"))
    sources = {DATA: ["$(R_DATA)"], EVAL: ["$(R_EVAL)"], BASE: ["$(R_BASE_FILES)"], CONTEXT: []}
    rules = {}
    for stage in STAGES:
        prerequisites = []
        for name in stage.inputs:
            prerequisites += sources[name] if name in sources else [str(stage_output(STAGE_BY_NAME[name], symbolic))]
        rules[stage.name] = (str(stage_output(stage, symbolic)), prerequisites)
    return rules


def _module_available(stage: Stage) -> bool:
    return importlib.util.find_spec("convert.lora") is not None if stage.name == "lora" else True


def run_stage(name: str, s: Settings) -> None:
    stage = STAGE_BY_NAME.get(name) or STAGE_BY_NAME.get(name.replace("-", "_"))
    if stage is None:
        raise EdgeftError(f"unknown release stage {name!r}; stages: {', '.join(STAGE_BY_NAME)}")
    if stage.optional and not _module_available(stage):
        print(f"{name}: skipped (module not installed)")
        return
    started = time.time()
    stage.run(s)
    if not stage.always:  # make shows only the command lines; the stage times are what a user tunes against
        print(f"{stage.name}: done in {time.time() - started:.0f}s")


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.exists() else None


def _stale(stage: Stage, s: Settings) -> bool:
    output = stage_output(stage, s)
    if stage.always or not output.exists():
        return True
    newest_input = max((p.stat().st_mtime for p in stage_inputs(stage, s) if p.exists()), default=0.0)
    return newest_input > output.stat().st_mtime


def run_pipeline(s: Settings, log=print) -> Path:
    """Run the stages in order, each only when its output is missing or older than one of its inputs."""
    if s.demo:
        from edgeft.demo import build_demo

        build_demo(DEMO_DIR)
    for stage in STAGES:
        if stage.optional and not _module_available(stage):
            continue
        if not _stale(stage, s):
            log(f"{stage.name}: up to date")
            continue
        if stage.always:
            before = _mtime(stage_output(stage, s))
            stage.run(s)
            log(f"{stage.name}: {'up to date' if _mtime(stage_output(stage, s)) == before else 'written'}")
            continue
        started = time.time()
        log(f"{stage.name}: running")
        stage.run(s)
        log(f"{stage.name}: done in {time.time() - started:.0f}s")
    return s.release_root / s.name
