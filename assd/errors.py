"""Errors the command line turns into one-line messages instead of tracebacks.

``UserError`` means the input was wrong (unknown model, unreadable file, bad option): exit code 2.
``CheckFailed`` means the command ran but a check it exists for failed (parity off, mAP delta over
tolerance): exit code 1.
"""


class UserError(Exception):
    """Bad input: the message names the file or option, what is wrong and what to do."""

    exit_code = 2


class CheckFailed(Exception):
    """A verification the user asked for did not pass (the outputs are still written)."""

    exit_code = 1
