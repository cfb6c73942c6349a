"""Helpers of the hostile-input tests (marked `hostile`, each in the test module of what it exercises): run a
command as a user would, then check that it failed the way the house asks for bad input: a non-zero exit, exactly
one line saying what, where and what to do, no traceback, and every input and earlier output byte for byte as it
was. Also the shared bad inputs themselves."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def invoke(*args, input: str | None = None):
    """`edgeft ARGS` in this process (click's CliRunner); stdout and stderr as the user would see them."""
    from edgeft.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def run(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m edgeft ARGS` in a fresh process (for what must not share this process: signals, mounts)."""
    full_env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
    return subprocess.run([sys.executable, "-m", "edgeft", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def shown_lines(text: str) -> list[str]:
    # A progress bar may be drawn and erased with \r before the failure; what stays on screen is after the last \r.
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return [line for line in lines if line.strip()]


def error_line(result, *needles: str, code: int = 1) -> str:
    """Assert a clean refusal (CliRunner result or CompletedProcess) and return its one line."""
    if isinstance(result, subprocess.CompletedProcess):
        exit_code, text, exception = result.returncode, result.stdout + result.stderr, None
    else:
        exit_code, text, exception = result.exit_code, result.output, result.exception
    assert "Traceback" not in text, text
    if exception is not None:
        assert isinstance(exception, SystemExit), repr(exception)
    assert exit_code == code, (exit_code, text)
    lines = shown_lines(text)
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def one_line_error(result, *needles: str, code: int = 1) -> str:
    """Like error_line, and nothing else was printed at all."""
    line = error_line(result, *needles, code=code)
    text = result.stdout + result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output
    assert shown_lines(text) == [line], text
    return line


def tree_state(*paths: Path) -> dict[str, str]:
    """Path -> sha256 (or 'dir') of everything under `paths`, hidden files included: compare before and after."""
    state = {}
    for root in map(Path, paths):
        if not root.exists():
            state[str(root)] = "absent"
            continue
        for path in sorted([root, *root.rglob("*")] if root.is_dir() else [root]):
            state[str(path)] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def interrupted_on_call(function, n: int):
    """`function`, except that its n-th call raises KeyboardInterrupt (a Ctrl-C in the middle of the work)."""
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapper


def disk_full_after(budget: int):
    """An `open` whose files take `budget` bytes in all (written to disk for real), then fail every write with
    ENOSPC, as a filling disk does: patch it over a writer module's `open` to fill the disk in the middle of a write."""
    import builtins
    import errno

    left = {"bytes": budget}

    class FillingFile:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data) -> int:
            size = memoryview(data).nbytes
            if size > left["bytes"]:
                self._handle.write(memoryview(data).cast("B")[: left["bytes"]])
                left["bytes"] = 0
                raise OSError(errno.ENOSPC, "No space left on device")
            left["bytes"] -= size
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    def filling_open(file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        return FillingFile(handle) if any(flag in mode for flag in "wax") else handle

    return filling_open


def _folder(path, files: dict):
    """`files`: name -> text ("/" : a sub-folder)."""
    path.mkdir()
    for name, text in files.items():
        (path / name).mkdir() if text == "/" else (path / name).write_text(text)
    return path


# A good conversation line, and lines that a JSON reader chokes on: each is a FILE:LINE finding, never a traceback.
GOOD = json.dumps({"messages": [{"role": "user", "content": "What colour is the box?"},
                                {"role": "assistant", "content": "The box is blue."}]})


def _good(i: int) -> str:
    return GOOD.replace("the box", f"box {i}")


HOSTILE_LINES = {
    "nested": '{"messages": ' + "[" * 50_000 + "]" * 50_000 + "}",
    "giant-number": '{"messages": [], "n": ' + "9" * 5000 + "}",
    "surrogate": _good(9000).replace("blue", "bl\\ud800ue"),
}
NEEDLES = {"nested": "nested too deeply", "giant-number": "4300 digits", "surrogate": "lone surrogate \\ud800"}
