"""The `edgeft` command line: a thin click group.

Each command lives in its own small module and is imported only when it is listed or run, so `edgeft --help`
never pays for torch. A command whose module does not exist yet is simply absent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from edgeft import __version__
from edgeft.errors import EdgeftError

# name -> "module:attribute". Order here is the order in `edgeft --help`: the flow of the pipeline.
COMMANDS: dict[str, str] = {
    "data": "edgeft.commands.data:data",
    "train": "edgeft.commands.train:train",
    "merge": "edgeft.commands.merge:merge",
    "convert": "edgeft.commands.convert:convert",
    "convert-lora": "edgeft.commands.convert_lora:convert_lora",
    "quantize": "edgeft.commands.quantize:quantize",
    "imatrix": "edgeft.commands.imatrix:imatrix",
    "eval": "edgeft.commands.eval:eval_command",
    "bench": "edgeft.commands.bench:bench",
    "chat": "edgeft.commands.chat:chat",
    "release": "edgeft.commands.release:release",
    "demo": "edgeft.commands.demo:demo",
}


def _available(target: str) -> bool:
    module = target.split(":", 1)[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class LazyGroup(click.Group):
    """Commands are imported on demand; EdgeftError becomes one line on stderr and exit status 1."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name, target in COMMANDS.items() if _available(target)]

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None or not _available(target):
            return None
        module_name, attr = target.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeft")
def main() -> None:
    """edgeft: fine-tune an open-weight LLM, ship one GGUF, and prove it beats the prompted base.

    \b
    Example:
      edgeft data check train.jsonl --eval eval.jsonl
      edgeft convert path/to/hf-model -o model.gguf --outtype q8_0
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
