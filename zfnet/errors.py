"""User-facing errors: one line naming the problem and the fix; the CLI prints it and exits 2."""
from __future__ import annotations


class UsageError(ValueError):
    """A problem with what the user asked for (a name, a path, a file), not a bug in zfnet.

    The message is one line that says what is wrong and how to fix it.
    """


NOTES: list[str] = []


def note(message: str) -> None:
    """A remark about how a result was made (e.g. an untrained model); the CLI prints the notes after the
    command has succeeded, so that an error stays the only line a failed command prints."""
    if message not in NOTES:
        NOTES.append(message)
