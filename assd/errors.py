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


def short_reason(exc: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an exception's message for a one-line error, cut at a word boundary
    with "..." when longer than ``limit`` characters (never mid-word)."""
    text = str(exc)
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(exc).__name__
                if isinstance(exc, BaseException) else "")
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:")
    return f"{cut}..."
