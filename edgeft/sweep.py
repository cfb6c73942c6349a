"""`edgeft sweep`: the few settings that matter (lr, epochs, rank...), chosen by the task's score, not the loss.

A grid maps recipe keys to lists of values; each combination is one trial, trained with `edgeft train` into
OUT/trials/NAME and scored on the validation split by the metric (select: metric, edgeft/train/select.py: the
trial's score is that of its best checkpoint). Everything is checked before the first trial trains: the grid's keys
are `edgeft train` settings, every combination resolves to a valid recipe, the metric can score the validation gold.

A trial whose summary.json exists is done and skipped; one a kill interrupted resumes from its last checkpoint.
After each trial sweep.json, sweep.md (the table), sweep.png and winner.yaml (the winner's recipe, every setting)
are rewritten, so a kill leaves them consistent with the trials finished. The winner has the best validation score;
a tie goes to the cheaper trial (fewer sequences trained), then to the earlier in the grid.

Example:
    run_sweep("base/", "train.jsonl", "out/sweep", grid={"lr": [1e-4, 1e-3], "epochs": [1, 2]}, metric="exact")
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convert.common.errors import EdgeftError
from convert.common.fsutil import atomic_file

MARKER = "sweep.json"
TRIALS = "trials"


@dataclass
class Trial:
    name: str
    settings: dict  # the grid's values for this trial
    recipe: dict  # the trial's whole train recipe (the base recipe + settings + selection)
    result: dict = field(default_factory=dict)  # from its summary.json once done


def check_grid(grid: Any, source: str) -> dict[str, list]:
    """A grid is a non-empty mapping of `edgeft train` settings to non-empty lists of values."""
    from edgeft.train.recipe import FIELDS

    if not isinstance(grid, dict) or not grid:
        raise EdgeftError(f"{source}: the grid is empty; map recipe keys to lists of values, e.g. "
                          "{lr: [1.0e-4, 1.0e-3], epochs: [1, 2]}")
    unknown = sorted(str(key) for key in grid if key not in FIELDS)
    if unknown:
        raise EdgeftError(f"{source}: {unknown[0]} is not an edgeft train setting; sweep any of: {', '.join(FIELDS)}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise EdgeftError(f"{source}: {key}: must be a non-empty list of values, e.g. {key}: [a, b]")
        if key in ("select", "metric", "validation", "keep"):
            raise EdgeftError(f"{source}: {key} is how trials are compared, not a setting to sweep; set it once")
    return grid


def _value_text(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def plan_trials(base_recipe: dict, grid: dict[str, list], metric: str, source: str) -> list[Trial]:
    """Every combination of the grid, in grid order, as a resolved and checked recipe."""
    from edgeft.train.recipe import resolve_recipe

    keys = list(grid)
    trials = []
    for values in itertools.product(*(grid[key] for key in keys)):
        settings = dict(zip(keys, values))
        # Trials are compared by their best-scoring checkpoint, whatever the base recipe keeps.
        recipe = {**base_recipe, **settings, "select": "metric", "metric": metric, "keep": "best"}
        try:
            resolve_recipe(recipe)
        except EdgeftError as exc:
            raise EdgeftError(f"{source}: trial {settings}: {exc}") from None
        name = "_".join(f"{key}={_value_text(value)}" for key, value in settings.items())
        trials.append(Trial(name.replace("/", "-"), settings, recipe))
    return trials


def _trial_state(folder: Path) -> str:
    from edgeft.train import checkpoint as ckpt

    if not folder.exists():
        return "new"
    return {"finished": "done", "resumable": "resume", "partial": "restart"}[ckpt.run_folder_state(folder)]


def _cost(result: dict) -> float:
    """Sequences the trial trained on: optimizer steps x effective batch (what a tie is broken by)."""
    return result["steps"] * result["effective_batch"]


def winner(trials: list[Trial]) -> Trial | None:
    done = [(index, trial) for index, trial in enumerate(trials) if trial.result]
    if not done:
        return None
    return min(done, key=lambda pair: (-pair[1].result["score"], _cost(pair[1].result), pair[0]))[1]


def _result(folder: Path) -> dict:
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
    return {"score": summary["best_val_score"], "best_step": summary["best_step"], "steps": summary["steps"],
            "loss": summary["best_eval_loss"], "train_seconds": summary["train_seconds"],
            "effective_batch": recipe["effective_batch"], "lr": recipe["lr"], "recipe": recipe}


def _stale(folder: Path, trial: Trial, base: Path, data: Path, eval_path) -> str | None:
    """Why a trial folder from an earlier sweep is not this trial's (its recipe or what it read changed), or None."""
    from convert.common.errors import EdgeftError as Refused
    from edgeft.identity import check_resume_inputs
    from edgeft.train.recipe import resolve_recipe
    from edgeft.train.size import apply_size_defaults

    saved = folder / "recipe.yaml"
    if not saved.is_file():
        return None
    planned, _ = apply_size_defaults(resolve_recipe(trial.recipe), base)
    if planned.to_dict() != resolve_recipe(saved).to_dict():
        return "its recipe changed"
    try:
        check_resume_inputs(folder, base, data, eval_path)
    except Refused:
        return "its base or data changed"
    return None


def run_trial(trial: Trial, folder: Path, base, data, eval_path, log) -> dict:
    from edgeft.train import train

    state = _trial_state(folder)
    why = _stale(folder, trial, base, data, eval_path) if state in ("done", "resume") else None
    if why:
        log(f"trial {trial.name}: trained again ({why} since it ran)")
        state = "restart"
    if state != "done":
        log(f"trial {trial.name}: {'resuming' if state == 'resume' else 'training'}")
        train(base, data, folder, eval_path=eval_path, config=dict(trial.recipe), resume=state == "resume",
              overwrite=state == "restart", progress=False)
    else:
        log(f"trial {trial.name}: done before, skipped")
    return _result(folder)


def _load_config(config) -> tuple[dict, str]:
    from edgeft.train.recipe import load_yaml

    if config is None:
        return {}, "the defaults"
    if isinstance(config, dict):
        return dict(config), "the recipe"
    return load_yaml(config), str(config)


def _preflight(trials: list[Trial], base: Path, data: Path, eval_path, source: str) -> None:
    """What train would refuse, refused for every trial before the first one trains."""
    from edgeft.train import preflight
    from edgeft.train.recipe import resolve_recipe
    from edgeft.train.size import apply_size_defaults

    checked = set()
    for trial in trials:
        recipe, _ = apply_size_defaults(resolve_recipe(trial.recipe), base)
        key = (str(recipe.validation), recipe.seed, recipe.metric, recipe.max_len)
        if key not in checked:
            checked.add(key)
            preflight(data, eval_path, recipe)


def run_sweep(base, data, out_dir, *, grid: dict, metric: str, config=None, eval_path=None,
              max_trials: int | None = None, budget_s: float | None = None, grid_source: str = "grid",
              log=print) -> dict:
    """Train and score every trial of `grid` (at most `max_trials`, none started after `budget_s` seconds) into
    OUT_DIR; return the sweep's record (what sweep.json holds)."""
    from convert.common.fsutil import refuse_foreign_folder, refuse_own_input
    from edgeft.train.model import check_base

    base, data, out_dir = check_base(base), Path(data), Path(out_dir)
    refuse_own_input(out_dir, {"base model folder": base, "training data": data, "eval data": eval_path,
                               "recipe": config if not isinstance(config, dict) else None})
    refuse_foreign_folder(out_dir, what="an edgeft sweep", markers=(MARKER,))
    if max_trials is not None and max_trials < 1:
        raise EdgeftError(f"--max-trials {max_trials}: must be at least 1")
    base_recipe, source = _load_config(config)
    trials = plan_trials(base_recipe, check_grid(grid, grid_source), metric, f"{grid_source} over {source}")
    left_out = [t.name for t in trials[max_trials:]] if max_trials else []
    trials = trials[:max_trials] if max_trials else trials
    _preflight(trials, base, data, eval_path, grid_source)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {"tool": "edgeft sweep", "base": str(base), "data": str(data), "metric": metric, "grid": grid,
              "trials": [], "winner": None, "not_run": left_out}
    _write_reports(out_dir, record, trials)
    started = time.monotonic()
    for index, trial in enumerate(trials):
        folder = out_dir / TRIALS / trial.name
        if budget_s is not None and time.monotonic() - started > budget_s and _trial_state(folder) != "done":
            record["not_run"] = [t.name for t in trials[index:] if not t.result] + left_out
            log(f"time budget of {budget_s:.0f} s spent: {len(record['not_run'])} trial(s) not run")
            break
        trial.result = run_trial(trial, folder, base, data, eval_path, log)
        log(f"trial {trial.name}: {100 * trial.result['score']:.1f}% {metric} at step {trial.result['best_step']}")
        _write_reports(out_dir, record, trials)
    return record


def _write_reports(out_dir: Path, record: dict, trials: list[Trial]) -> None:
    from edgeft.sweep_report import write_plot, write_table

    best = winner(trials)
    record["winner"] = best and best.name
    record["trials"] = [{"name": t.name, "settings": t.settings,
                         **{k: v for k, v in t.result.items() if k != "recipe"}} for t in trials]
    if best is not None:
        text = (f"# The sweep's winner: trial {best.name}, {100 * best.result['score']:.1f}% {record['metric']} on "
                f"the validation split.\n# edgeft train --base {record['base']} --data {record['data']} "
                f"-o OUT --config {out_dir / 'winner.yaml'}\n")
        with atomic_file(out_dir / "winner.yaml") as tmp:
            tmp.write_text(text + yaml.safe_dump(best.result["recipe"], sort_keys=False), encoding="utf-8")
    write_table(out_dir / "sweep.md", record)
    write_plot(out_dir / "sweep.png", record)
    with atomic_file(out_dir / MARKER) as tmp:  # last: it says what the other files hold
        tmp.write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")


def train_winner(base, data, out_dir: Path, *, grid: dict, metric: str, config: dict, eval_path=None,
                 sweep_dir: Path, log=print) -> dict:
    """The release's `sweep:`: run (or finish) the sweep into `sweep_dir`, then reuse the winner's run as the
    trained adapter in `out_dir` (its files but the resumable checkpoints). Returns the sweep's record."""
    import shutil

    record = run_sweep(base, data, sweep_dir, grid=grid, metric=metric, config=config, eval_path=eval_path,
                       grid_source="sweep", log=log)
    if record["winner"] is None:
        raise EdgeftError(f"{sweep_dir}: no trial finished, so there is no winner to ship; rerun the release")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(sweep_dir / TRIALS / record["winner"], out_dir, ignore=shutil.ignore_patterns("checkpoints"))
    log(f"sweep: the winner {record['winner']} is the adapter (table {sweep_dir / 'sweep.md'})")
    return record
