"""`edgeft release`: data check -> train -> merge -> convert -> quantize -> eval -> bench -> release/NAME/."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="release recipe YAML (name, quant, train:, eval: with gates)")
@click.option("--base", help="base model: local HF folder (default: the built-in demo base)")
@click.option("--data", type=click.Path(path_type=Path), help="training conversations, JSONL")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), help="held-out conversations, JSONL")
@click.option("--quant", help="quant type to ship, llama.cpp names (default Q4_K_M)")
@click.option("--name", help="release name (default: edgeft-demo, or the base folder's name)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="work folder; stage outputs go to OUT/NAME")
@click.option("--release-dir", type=click.Path(path_type=Path), default=Path("release"), show_default=True,
              help="where release/NAME/ is published")
@click.pass_context
def release(ctx: click.Context, recipe_path, base, data, eval_path, quant, name, out, release_dir) -> None:
    """Run the whole pipeline, each stage only when its inputs changed, and publish release/NAME/ if gates pass.

    Without --base it runs the built-in demo. A failed gate exits non-zero and publishes nothing (the eval report
    stays in OUT/NAME/eval).

    \b
    Example:
      edgeft release                                   # the demo
      edgeft release --recipe recipe.yaml --base path/to/hf-model --data train.jsonl --eval eval.jsonl
      edgeft release --base M --data T --eval E stage train     # one stage (what `make release` calls)
      edgeft release verify release/edgeft-demo                 # re-hash every file against manifest.json
    """
    if ctx.invoked_subcommand == "verify":
        return
    from edgeft.release.pipeline import run_pipeline
    from edgeft.release.settings import resolve_settings

    settings = resolve_settings(base=base, data=data, eval_path=eval_path, quant=quant, name=name,
                                recipe_path=recipe_path, out=out, release_root=release_dir)
    ctx.obj = settings
    if ctx.invoked_subcommand is None:
        published = run_pipeline(settings, log=click.echo)
        click.echo(f"release: {published}")


@release.command("stage")
@click.argument("stage_name")
@click.pass_obj
def release_stage(settings, stage_name: str) -> None:
    """Run one stage (settings, check, train, merge, imatrix, f16, model, base_imatrix, base_gguf, lora, eval,
    bench, publish) regardless of timestamps; make decides when.

    \b
    Example:
      edgeft release --base M --data T --eval E stage merge
    """
    from edgeft.release.pipeline import run_stage

    run_stage(stage_name, settings)


@release.command("verify")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False))
def release_verify(folder: Path) -> None:
    """Re-hash every file of a published release against its manifest.json; exit 1 on any difference.

    \b
    Example:
      edgeft release verify release/edgeft-demo
    """
    from edgeft.errors import EdgeftError
    from edgeft.release.publish import verify_release

    problems = verify_release(folder)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise EdgeftError(f"{folder}: {len(problems)} file(s) differ from manifest.json; do not ship this folder")
    click.echo(f"{folder}: every file matches manifest.json")
