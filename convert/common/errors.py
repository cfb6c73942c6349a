"""The one exception type for errors a user can cause.

The CLI prints it as a single line (what, where, what to do) and exits non-zero; no traceback.
`convert` and `runtime` raise it too, so this module must import nothing heavy.
"""


class EdgeftError(Exception):
    """A user-caused error: bad data, unknown architecture, missing file...

    The message is the whole story in one line: what went wrong, where (file:line or tensor name), and what to do.
    """


# The environment, not the input, is at fault: errno -> (what happened, what to do). One table, so every command
# words a full disk or a read-only folder the same way (see `environment_error`).
ENVIRONMENT_ERRORS: dict[str, tuple[str, str]] = {
    "ENOSPC": ("the disk is full", "free some space or write to another disk"),
    "EDQUOT": ("the disk quota is used up", "free some space or write to another disk"),
    "EFBIG": ("the file is too large for this file system", "write to another disk"),
    "EROFS": ("the file system is read-only", "choose a location on a writable disk"),
    "EACCES": ("permission denied", "choose a location you can write to, or fix its permissions"),
    "EPERM": ("operation not permitted", "choose a location you can write to"),
    "ENOENT": ("no such file or folder", "check the path"),
    "ENOTDIR": ("a part of the path is a file, not a folder", "check the path"),
    "EISDIR": ("it is a folder", "pass a file path"),
    "ENOTEMPTY": ("the folder is not empty", "choose another location"),
    "ENAMETOOLONG": ("the name is too long", "choose a shorter path"),
    "EIO": ("the disk reported an input/output error", "check the disk, then try again"),
    "EMFILE": ("too many open files", "raise the limit (ulimit -n) and try again"),
}
# Creating something inside a folder that exists yet says ENOENT (/proc, /sys): the place takes no new files.
_OUTPUT_REASONS = {"ENOENT": ("files cannot be created there", "choose another location")}


def environment_error(exc: OSError, output: object = None, *, note: str = "nothing was written") -> EdgeftError:
    """One line for an OSError. `output`: the file or folder being written, when known (a full disk's write()
    names no file); the partial output has been removed by then, which `note` says."""
    import errno

    name = errno.errorcode.get(exc.errno or 0, "")
    if output is not None:
        what, todo = _OUTPUT_REASONS.get(name) or ENVIRONMENT_ERRORS.get(name) or (exc.strerror or str(exc), "")
        return EdgeftError(f"{output}: cannot write it: {what}; {todo or 'check the path and the disk'} ({note})")
    what, todo = ENVIRONMENT_ERRORS.get(name) or (exc.strerror or str(exc), "check the path and the disk")
    where = exc.filename if exc.filename is not None else ""
    return EdgeftError(f"{where}: {what}; {todo}" if where else f"{what} ({exc.strerror or exc}); {todo}")


def yaml_problem(exc: Exception) -> str:
    """A PyYAML error in one line, "line N, column M: what" (its own text spans several lines with a caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
