"""edgeft/cli.py: the CLI starts fast and without torch, lists every command, and turns a user error into one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _run_to_the_end(code: str) -> None:
    """Run `code` in a fresh interpreter; it must exit 0 and reach its last line (an 'ok' printed after it)."""
    proc = subprocess.run([sys.executable, "-c", code + "print('ok')\n"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_cli_help_lists_groups_without_importing_torch():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from edgeft.cli import main, COMMANDS\n"
        "result = CliRunner().invoke(main, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "missing = [n for n in COMMANDS if n not in result.output]\n"
        "assert not missing, missing\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    _run_to_the_end(code)


def test_a_command_whose_module_is_gone_fails_loudly(monkeypatch):
    from click.testing import CliRunner

    from edgeft import cli

    monkeypatch.setitem(cli.COMMANDS, "gone", "edgeft.commands.gone:gone")
    for args in (["--help"], ["gone"]):
        result = CliRunner().invoke(cli.main, args)
        assert isinstance(result.exception, ModuleNotFoundError) and "edgeft.commands.gone" in str(result.exception)


def test_cli_version():
    from click.testing import CliRunner

    from edgeft import __version__
    from edgeft.cli import main

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_user_error_is_one_line_and_nonzero():
    import click
    from click.testing import CliRunner

    from edgeft.cli import LazyGroup
    from convert.common.errors import EdgeftError

    @click.group(cls=LazyGroup)
    def group():
        pass

    @group.command()
    def boom():
        raise EdgeftError("data.jsonl:7: not valid JSON; fix the line or drop it with --fix")

    # LazyGroup only lists the table's commands; register ours directly for this check.
    group.get_command = lambda ctx, name: boom if name == "boom" else None
    result = CliRunner().invoke(group, ["boom"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: data.jsonl:7: not valid JSON; fix the line or drop it with --fix"


def test_convert_and_runtime_import_with_torch_unavailable():
    # sys.modules[name] = None makes `import name` raise ImportError, as on a laptop without the train extra.
    code = (
        "import sys, pkgutil, importlib\n"
        "for name in ('torch', 'transformers', 'peft', 'bitsandbytes', 'accelerate'):\n"
        "    sys.modules[name] = None\n"
        "import convert, runtime\n"
        "for pkg in (convert, runtime):\n"
        "    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(info.name)\n"
    )
    _run_to_the_end(code)
