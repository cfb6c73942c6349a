"""Atomic outputs: every file or folder is written under a temporary name in the same folder and renamed when
complete, so a killed command never leaves something that looks finished."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from edgeft.errors import EdgeftError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_writable_parent(path: Path) -> Path:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeftError(f"{parent}: cannot create output folder ({exc.strerror}); choose another -o path") from exc
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgeftError(f"{parent}: output folder is not writable; choose another -o path")
    return parent


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes without error."""
    path = Path(path)
    parent = _check_writable_parent(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600; a finished output should get the ordinary permissions a plain open() would give.
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        # BaseException: Ctrl-C and SystemExit must not leave a half-written file either.
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only when the block completes."""
    path = Path(path)
    parent = _check_writable_parent(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise EdgeftError(f"{path}: output folder exists and is not empty; pass --overwrite or choose another -o")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a finished folder gets the usual permissions
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
