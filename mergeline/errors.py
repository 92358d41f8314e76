"""The one exception type for bad input.

Raise :class:`MergelineError` for anything the user can fix (a config value, a file, a tensor). The
message must be one line and name the file, tensor or parameter at fault; the CLI prints it to stderr
and exits with status 2. Anything else is a bug or an environment failure and exits 1.
"""


class MergelineError(Exception):
    """Bad input: a one-line message naming the file, tensor or parameter at fault."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it one line so the CLI output stays grep-able.
        super().__init__(" ".join(str(message).split()))
