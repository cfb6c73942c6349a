"""`edgeft release`: the whole pipeline, from the training data to release/NAME/, run by make."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.option("--recipe", "recipe_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="release recipe YAML (name, quant, train:, eval: with gates)")
@click.option("--base", help="base model: local HF folder (default: the built-in demo base)")
@click.option("--data", type=click.Path(path_type=Path), help="training conversations, JSONL")
@click.option("--eval", "eval_path", type=click.Path(path_type=Path), help="held-out conversations, JSONL")
@click.option("--quant", help="quant type to ship, llama.cpp names, or auto: the smallest file whose task score "
                               "keeps within eval.quant_tolerance points of the best (default: the recipe's quant:, "
                               "else Q4_K_M)")
@click.option("--name", help="release name (default: the recipe's name:, else edgeft-demo or the base folder's name)")
@click.option("--out", type=click.Path(path_type=Path), default=Path("out"), show_default=True,
              help="work folder; stage outputs go to OUT/NAME")
@click.option("--release-dir", type=click.Path(path_type=Path), default=Path("release"), show_default=True,
              help="where release/NAME/ is published")
@click.pass_context
def release(ctx: click.Context, recipe_path, base, data, eval_path, quant, name, out, release_dir) -> None:
    """Run the whole pipeline with make, each stage only when its inputs changed, and publish release/NAME/ if
    the gates pass.

    Without --base it runs the built-in demo. A failed gate exits non-zero and publishes nothing (the eval report
    stays in OUT/NAME/eval). The stages and what each reads: edgeft/release/graph.py.

    \b
    Example:
      edgeft release                                   # the demo
      edgeft release --recipe recipe.yaml --base path/to/hf-model --data train.jsonl --eval eval.jsonl
      edgeft release --base M --data T --eval E stage train     # one stage (what make calls)
      edgeft release verify release/edgeft-demo                 # files, card and figures against manifest.json
    """
    from edgeft.release.settings import resolve_settings

    def settings():
        return resolve_settings(base=base, data=data, eval_path=eval_path, quant=quant, name=name,
                                recipe_path=recipe_path, out=out, release_root=release_dir)

    ctx.obj = settings
    if ctx.invoked_subcommand is None:
        from edgeft.release.pipeline import run_release

        resolved = settings()
        status = run_release(resolved)
        if status:
            ctx.exit(status)
        if resolved.path("publish").is_dir():  # not under `make -n`
            click.echo(f"release: {resolved.path('publish')}")
    elif ctx.invoked_subcommand != "verify":
        settings()  # a bad setting is refused before the subcommand's own arguments are looked at


@release.command("stage")
@click.argument("stage_name")
@click.pass_obj
def release_stage(settings, stage_name: str) -> None:
    """Run one stage of the table in edgeft/release/graph.py regardless of timestamps; make decides when.

    \b
    Example:
      edgeft release --base M --data T --eval E stage merge
    """
    from edgeft.release.pipeline import run_stage

    run_stage(stage_name, settings())


@release.command("verify")
@click.argument("folder", type=click.Path(path_type=Path, exists=True, file_okay=False), required=False)
@click.option("--digest", help="manifest.json's sha256 as the publisher announced it (the card and NAME.sha256 "
                               "beside the folder record it too)")
@click.pass_obj
def release_verify(settings, folder: Path | None, digest: str | None) -> None:
    """Check a published release: every file against manifest.json, the manifest against its recorded sha256, the
    card against the manifest's figures, the verdict against the gates; exit 1 on any difference. Without FOLDER,
    the release the options name (what `make release-check` verifies).

    \b
    Example:
      edgeft release verify release/edgeft-demo
      edgeft release verify release/edgeft-demo --digest 9f2c...   # the digest the publisher announced
    """
    folder = folder or settings().path("publish")
    from convert.common.errors import EdgeftError
    from edgeft.release.verify import checked_against, verify_release

    problems = verify_release(folder, digest)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise EdgeftError(f"{folder}: {len(problems)} problem(s) above: files, card or figures differ from "
                          "manifest.json; do not ship this folder")
    click.echo(f"{folder}: every file matches manifest.json, the card shows its figures; "
               f"{checked_against(folder, digest)}")
