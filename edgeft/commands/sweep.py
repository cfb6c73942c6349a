"""`edgeft sweep`: train a grid of recipes and keep the one the task's metric likes best."""

from __future__ import annotations

import click


@click.command("sweep")
@click.option("--base", required=True, help="Base model: local Hugging Face folder or hub id (owner/name).")
@click.option("--data", required=True, type=click.Path(path_type=str), help="Training conversations, JSONL.")
@click.option("--config", type=click.Path(path_type=str), default=None,
              help="The recipe every trial starts from (edgeft train's YAML); the grid's values override it.")
@click.option("--grid", "grid_path", required=True, type=click.Path(path_type=str),
              help="YAML mapping recipe keys to lists of values, e.g. {lr: [1.0e-4, 1.0e-3], epochs: [1, 2]}.")
@click.option("--metric", required=True, help="What scores each trial on the validation split: exact, "
                                                "json-match, sql-exec:DB.sqlite...")
@click.option("--eval", "eval_path", type=click.Path(path_type=str), default=None,
              help="The held-out eval set: only compared with, so no validation example repeats it.")
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Output folder: trials/, sweep.md, sweep.png, sweep.json, winner.yaml.")
@click.option("--max-trials", type=int, default=None, help="Run at most this many trials (in grid order).")
@click.option("--budget-minutes", type=float, default=None,
              help="Start no trial after this many minutes (the ones running finish).")
def sweep(base, data, config, grid_path, metric, eval_path, out_dir, max_trials, budget_minutes):
    """Train one trial per combination of GRID and pick the best by METRIC on a validation split.

    Each trial is `edgeft train` with select: metric (the recipe's validation split, or 0.1 of --data); a trial
    already finished is skipped, one a kill interrupted resumes. A tie goes to the trial that trained on fewer
    sequences. The winner's whole recipe is written to OUT/winner.yaml.

    \b
    Example:
      edgeft sweep --base path/to/hf-model --data train.jsonl --config recipe.yaml --grid grid.yaml \\
        --metric exact -o out/sweep
    """
    from convert.common.jsonl import read_yaml
    from convert.common.fsutil import refuse_own_input
    from edgeft.modelref import is_hub_id, resolve_model
    from edgeft.sweep import run_sweep

    if is_hub_id(base):
        base = str(resolve_model(base, what="base model"))
    refuse_own_input(out_dir, {"grid": grid_path})
    record = run_sweep(base, data, out_dir, grid=read_yaml(grid_path, "sweep grid"), metric=metric, config=config,
                       eval_path=eval_path, max_trials=max_trials, grid_source=grid_path,
                       budget_s=None if budget_minutes is None else 60 * budget_minutes, log=click.echo)
    click.echo(f"winner        {record['winner']} ({out_dir}/winner.yaml; table {out_dir}/sweep.md)")
