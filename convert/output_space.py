"""Room on disk for an output, in one place for the three writers: the GGUF one (convert, quantize) and the
safetensors one (import).

A writer knows every byte it will write before the first one (the tensor table fixes the sizes), so an output that
cannot fit is refused up front, in one line with the numbers. A disk that fills anyway (another process writing, a
quota, space the file system keeps for itself) fails mid-write as one line with the same numbers; the partial
output is then removed by the staging around it (convert.common.fsutil.atomic_file / atomic_dir).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

from convert.common.errors import EdgeftError

# Kept free beyond the planned bytes: file-system metadata and block rounding, and the small files (config,
# tokenizer, model card) an import writes beside its weights. Small next to a model, large next to rounding.
MARGIN_BYTES = 16 * 1024 * 1024
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def human_size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes} bytes"


def _folder_of(output: Path) -> Path:
    """The existing folder the output goes in (or would, once its missing parents are made): where its bytes land."""
    folder = output.parent if str(output.parent) else Path(".")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _bytes_held(partial: Path) -> int:
    """Size of a partial output (a file, or a folder of files): space that comes back once it is removed."""
    try:
        if partial.is_dir():
            return sum(entry.stat().st_size for entry in partial.rglob("*") if entry.is_file())
        return partial.stat().st_size
    except OSError:
        return 0


def _refusal(output: Path, what: str, needed: int, free: int, folder: Path) -> EdgeftError:
    return EdgeftError(f"{output}: cannot write it: {what}: it needs {human_size(needed)} and {folder} has "
                       f"{human_size(free)} free; free some space or write to another disk (nothing was written)")


def check_room(output: Path, needed: int) -> None:
    """Refuse in one line when `needed` bytes, plus MARGIN_BYTES, do not fit where `output` goes."""
    folder = _folder_of(Path(output))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # the file system cannot say: the write decides
        return
    if needed + MARGIN_BYTES > free:
        raise _refusal(output, "the disk is full", needed, free, folder)


@contextlib.contextmanager
def room_for(output: str | os.PathLike, needed: int, partial: Path) -> Iterator[None]:
    """Check the room for `needed` bytes now, then turn a full disk during the block (ENOSPC, EDQUOT) into the same
    one line. `partial` is the temporary output being written; its bytes count as free, as they are once removed."""
    output = Path(output)
    check_room(output, needed)
    try:
        yield
    except OSError as exc:
        if exc.errno not in FULL_DISK_ERRNOS:
            raise
        try:
            free = shutil.disk_usage(partial.parent).free + _bytes_held(partial)
        except OSError:
            free = _bytes_held(partial)
        raise _refusal(output, "the disk filled up while writing", needed, free, partial.parent) from exc
