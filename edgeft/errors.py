"""The one exception type for errors a user can cause.

The CLI prints it as a single line (what, where, what to do) and exits non-zero; no traceback.
`convert` and `runtime` raise it too, so this module must import nothing heavy.
"""


class EdgeftError(Exception):
    """A user-caused error: bad data, unknown architecture, missing file...

    The message is the whole story in one line: what went wrong, where (file:line or tensor name), and what to do.
    """
