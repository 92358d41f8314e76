"""The one exception type for bad input.

Raise :class:`MergelineError` for anything the user can fix (a config value, a file, a tensor). The
message must be one line and name the file, tensor or parameter at fault; the CLI prints it to stderr
and exits with status 2. Anything else is a bug or an environment failure and exits 1.
"""


MAX_MESSAGE = 1000  # characters: a message quoting a hostile value must not become a dump of it


class MergelineError(Exception):
    """Bad input: a one-line message naming the file, tensor or parameter at fault."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it one line so the CLI output stays grep-able, and short.
        text = " ".join(str(message).split())
        if len(text) > MAX_MESSAGE:
            text = f"{text[:MAX_MESSAGE]}… ({len(text) - MAX_MESSAGE} more characters)"
        super().__init__(text)
