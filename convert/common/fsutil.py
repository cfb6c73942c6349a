"""Atomic outputs: every file or folder is written under a temporary name in the same folder and renamed when
complete, so a killed command never leaves something that looks finished.

Temporary names are recognisable, `.NAME.PID-RANDOM.edgeft-tmp`: a run that starts writing NAME first removes the
ones a killed run (its PID no longer alive) left beside it. A write that fails because of the environment (full
disk, read-only or forbidden folder, a path that cannot be created) removes its partial output and becomes one line
through `convert.common.errors.environment_error`, naming the output rather than the temporary file.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from convert.common.errors import EdgeftError, environment_error

TEMP_TAG = "edgeft-tmp"
# Below this much free space a failed write is taken for a full disk even when the library that wrote (torch,
# safetensors) did not pass the OSError on.
LOW_SPACE_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's live process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files/folders that killed runs left beside `path`; returns what was removed."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.{TEMP_TAG}")
    removed = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def temp_name(path: Path, suffix: str = "") -> Path:
    """A fresh recognisable temporary name beside `path` (nothing is created)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.{TEMP_TAG}{suffix}")


def make_temp(path: str | os.PathLike, *, directory: bool, suffix: str = "") -> Path:
    """Create a temporary file or folder beside `path`, after clearing stale ones a killed run left there."""
    path = Path(path)
    remove_stale_temps(path)
    while True:
        tmp = temp_name(path, suffix)
        try:
            if directory:
                tmp.mkdir(mode=0o777 & ~_umask())
            else:
                os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_umask()))
            return tmp
        except FileExistsError:
            continue


def output_parent(path: Path) -> Path:
    """The folder `path` goes in, created when missing; an unusable place is one line naming `path`."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise EdgeftError(f"{path}: cannot create output folder {parent}: {blocker} is a file; choose another "
                              "output path") from None
        raise environment_error(exc, path) from None
    if not os.access(parent, os.W_OK | os.X_OK):  # early and plain; root passes it, and creating the file decides
        raise EdgeftError(f"{path}: cannot write it: the folder {parent} is not writable; choose a location you can "
                          "write to")
    return parent


def check_writable(path: str | os.PathLike) -> None:
    """Fail now, with one line, if `path` (a file or folder that may not exist yet) could not be written: for
    commands that write late, after minutes of work (training writes its first file after loading the model)."""
    path = Path(path)
    probe_dir = path if path.is_dir() else path.parent if str(path.parent) else Path(".")
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise EdgeftError(f"{path}: {probe_dir} is a file, not a folder; choose another output path")
    try:
        probe = make_temp(probe_dir / ".edgeft-write-probe", directory=False)
        probe.unlink()
    except OSError as exc:
        raise environment_error(exc, path) from None


def _about_output(exc: OSError, tmp: Path) -> bool:
    """An OSError from the writing block concerns the output unless it names some other file (an input)."""
    names = [name for name in (exc.filename, getattr(exc, "filename2", None)) if name is not None]
    return not names or any(str(name).startswith(str(tmp)) for name in names)


def _failure(exc: BaseException, output: Path, tmp: Path) -> EdgeftError | None:
    """The one-line error for a write that failed because of the environment, or None (not ours to reword).
    Called while the partial output still exists: the space it holds is what shows a disk is full."""
    if not isinstance(exc, Exception) or isinstance(exc, EdgeftError):
        return None
    if isinstance(exc, OSError) and exc.errno is not None:
        return environment_error(exc, output) if _about_output(exc, tmp) else None
    try:
        full = shutil.disk_usage(tmp.parent).free < LOW_SPACE_BYTES
    except OSError:
        return None
    return environment_error(OSError(28, "No space left on device"), output) if full else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def _staged(path: Path, *, directory: bool, suffix: str = "") -> Iterator[Path]:
    """A temporary file or folder beside `path`. If the block fails in any way (BaseException: Ctrl-C and
    SystemExit too) it is removed, and a failure of the environment becomes one line naming `path`."""
    parent = output_parent(path)
    try:
        tmp = make_temp(parent / path.name, directory=directory, suffix=suffix)
    except OSError as exc:
        raise environment_error(exc, path) from None
    try:
        yield tmp
    except BaseException as exc:
        problem = _failure(exc, path, tmp)
        _remove(tmp)
        if problem is not None:
            raise problem from exc
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes without error."""
    path = Path(path)
    with _staged(path, directory=False, suffix=suffix) as tmp:
        yield tmp
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; it becomes `path` only when the block completes."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise EdgeftError(f"{path}: exists and is not a folder; choose another output folder")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise EdgeftError(f"{path}: output folder exists and is not empty; pass --overwrite or choose another -o")
    with _staged(path, directory=True) as tmp:
        yield tmp
        if path.exists():
            # The old folder moves aside under a temporary name first, so no moment exists without a whole one.
            old = temp_name(path)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)


@contextlib.contextmanager
def hold_folder(folder: str | os.PathLike, *, holder: str, advice: str) -> Iterator[bool]:
    """Hold `folder` (created when missing) for this process while the block runs; yields whether it was created.

    The hold is an exclusive flock on the folder itself: the OS drops it when the process ends in any way (an error,
    Ctrl-C, SIGKILL), so nothing is left to clear and no pid, which the system may give to another process, is
    trusted. A second holder is refused in one line (`holder`: who holds it, "another edgeft train"). Whoever replaces
    the folder's contents while holding it must keep the folder itself (`empty_folder`): a new folder would be
    another lock. A folder created here and still empty at the end is removed.
    """
    import fcntl

    folder = Path(folder)
    while True:
        if folder.exists() and not folder.is_dir():
            raise EdgeftError(f"{folder}: exists and is not a folder; choose another -o")
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise EdgeftError(f"{folder}: {holder} is using this folder right now; {advice}") from None
        # Held, but maybe a folder removed (and made again) since it was opened: hold the one at the path.
        with contextlib.suppress(OSError):
            if os.path.samestat(os.fstat(handle), os.stat(folder)):
                break
        os.close(handle)
    try:
        yield created
    finally:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
        os.close(handle)


def empty_folder(folder: str | os.PathLike) -> None:
    """Remove everything inside `folder`, keeping the folder itself (and so a `hold_folder` on it)."""
    for entry in Path(folder).iterdir():
        _remove(entry)


def refuse_own_input(output: str | os.PathLike, inputs: dict[str, object], *, option: str = "-o",
                     around: bool = True) -> None:
    """No command writes over or inside its own input, nor (`around`) puts an output folder around one that
    replacing the folder would delete. `inputs`: what the user calls it ("model folder") -> path (None: not given)."""
    out = Path(output).expanduser().resolve()
    for what, value in inputs.items():
        if value is None:
            continue
        source = Path(value).expanduser().resolve()
        if out == source:
            raise EdgeftError(f"{option} {output}: is the {what} itself; write the output somewhere else")
        if source in out.parents:
            raise EdgeftError(f"{option} {output}: is inside the {what} {value}; write the output somewhere else")
        if around and out in source.parents:
            raise EdgeftError(f"{option} {output}: holds the {what} {value}, which replacing the output would delete; "
                              "write the output somewhere else")


def is_killed_write(entry: Path) -> bool:
    """A temporary file or folder some write left (a live run's, or a killed one's not yet cleared)."""
    return entry.name.startswith(".") and f".{TEMP_TAG}" in entry.name


def is_empty_folder(folder: str | os.PathLike) -> bool:
    """Missing, or empty but for temporary files a killed write left."""
    folder = Path(folder)
    return not folder.is_dir() or all(is_killed_write(entry) for entry in folder.iterdir())


def _marker_names(marker: str | tuple[str, ...]) -> tuple[str, ...]:
    return (marker,) if isinstance(marker, str) else marker


def is_marked(folder: str | os.PathLike, markers: tuple[str | tuple[str, ...], ...], vouch_marker=None) -> bool:
    """Whether `folder` holds one of `markers`: a file name, or a tuple of names that together are one (what an
    older version wrote first, before it had a stamp); `vouch_marker`, when given, returns why a marker file present
    is not the command's (another tool's file of the same name), or None."""
    folder = Path(folder)
    for names in map(_marker_names, markers):
        if all((folder / name).is_file() for name in names) and not (
                vouch_marker is not None and any(vouch_marker(folder / name) for name in names)):
            return True
    return False


def refuse_foreign_folder(folder: str | os.PathLike, *, what: str, markers: tuple[str | tuple[str, ...], ...] = (),
                          outputs: tuple[str, ...] = (), vouch=None, vouch_marker=None,
                          advice: str = "choose another -o or empty it yourself") -> None:
    """The one rule for "may this command write into, or replace, that folder" (`what`: what the command's own
    folders are, "an edgeft data split"): yes when it is missing, empty (but for temporary files a killed write
    left), holds one of `markers` (the stamp the command writes into its folders; see `is_marked`), or holds nothing
    but `outputs` (names or fnmatch patterns of the files the command writes; `vouch`, when given, returns why an
    output file present is not the command's, or None). Anything else is someone's: one line naming a file that is
    not ours."""
    import fnmatch

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise EdgeftError(f"{folder}: is a file, not a folder; {advice}")
    if not folder.is_dir() or is_marked(folder, markers, vouch_marker):
        return
    # Without outputs of its own, what a folder lacks is the command's stamp (the older multi-file ones aside).
    stamps = " or ".join(marker for marker in markers if isinstance(marker, str))
    marker_names = {name for marker in markers for name in _marker_names(marker)}
    for entry in sorted(folder.iterdir()):
        if is_killed_write(entry):
            continue
        name = ascii(entry.name)[1:-1]
        problem = vouch_marker(entry) if vouch_marker and entry.name in marker_names and entry.is_file() else None
        if problem:
            raise EdgeftError(f"{folder}: exists and is not {what}: its {name} {problem}; {advice}")
        if not (entry.is_file() and any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in outputs)):
            held = (f"it holds {name}, which this command does not write" if outputs or not stamps
                    else f"it holds {name} and no {stamps}")
            raise EdgeftError(f"{folder}: exists and is not {what}: {held} (it never replaces someone's files); "
                              f"{advice}")
        problem = vouch(entry) if vouch is not None else None
        if problem:
            raise EdgeftError(f"{folder}: exists and is not {what}: its {name} {problem}; {advice}")
