"""The `edgeft` command line: a thin click group.

Each command lives in its own small module and is imported only when it is listed or run, so `edgeft --help`
never pays for torch. A library error about a setting (runtime.eval_settings.SettingError) is shown here with the
flag the user typed for it: the one place the library's setting names become flags.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from edgeft import __version__
from convert.common.errors import EdgeftError, environment_error
from runtime.eval_settings import SettingError

# name -> "module:attribute". Order here is the order in `edgeft --help`: the flow of the pipeline.
COMMANDS: dict[str, str] = {
    "data": "edgeft.commands.data:data",
    "train": "edgeft.commands.train:train",
    "sweep": "edgeft.commands.sweep:sweep",
    "merge": "edgeft.commands.merge:merge",
    "convert": "edgeft.commands.convert:convert",
    "convert-lora": "edgeft.commands.convert_lora:convert_lora",
    "import": "edgeft.commands.import_gguf:import_gguf",
    "quantize": "edgeft.commands.quantize:quantize",
    "imatrix": "edgeft.commands.imatrix:imatrix",
    "eval": "edgeft.commands.eval:eval_command",
    "bench": "edgeft.commands.bench:bench",
    "chat": "edgeft.commands.chat:chat",
    "serve": "edgeft.commands.serve:serve",
    "release": "edgeft.commands.release:release",
    "demo": "edgeft.commands.demo:demo",
}


class _DropOptionalKernelNotice(logging.Filter):
    """bitsandbytes logs, at import, on every AVX512-BF16 CPU, that its optional `kernels` speed-up is not installed
    ("Failed to load CPU gemm_4bit_forward ... pip install kernels"), even for --method lora, which never runs a
    4-bit kernel; users read it as an error. Its 4-bit CPU path works without it, so the line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropOptionalKernelNotice())


class LazyGroup(click.Group):
    """Commands are imported on demand; EdgeftError becomes one line on stderr and exit status 1, and so does an
    OSError no command caught (a full disk, a read-only or missing path): the environment, worded in one place."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":", 1)
        return getattr(importlib.import_module(module_name), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeftError as exc:
            if isinstance(exc, SettingError) and ctx.invoked_subcommand:
                raise click.ClickException(exc.named(flags(self.get_command(ctx, ctx.invoked_subcommand)))) from None
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:  # one line too, not click's usage block; still exit status 2
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            error = click.ClickException(exc.format_message() + where)
            error.exit_code = exc.exit_code
            raise error from None
        except OSError as exc:
            if exc.errno is None:
                raise
            raise click.ClickException(str(environment_error(exc))) from None


def flags(command: click.Command) -> dict[str, str]:
    """Setting name -> the flag that sets it (an option's first spelling: -o, not --output), over a group's
    subcommands too; a command's `setting_words(flags)` adds the settings no one flag sets."""
    commands = [command, *getattr(command, "commands", {}).values()]
    names = {param.name: param.opts[0] for cmd in reversed(commands) for param in cmd.params
             if isinstance(param, click.Option)}
    return {**names, **getattr(command, "setting_words", lambda _: {})(names)}


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
