"""User-facing errors and notes.

`UsageError`: one line naming the problem and the fix; the CLI prints it and exits 2.
`note(message)`: a remark about how a result was made (e.g. an untrained model), issued as a `ZfnetNote`
warning; the CLI prints the notes after the command has succeeded, so that an error stays the only line a
failed command prints. Library users see them as ordinary warnings (filter them with `warnings`).
"""

from __future__ import annotations

import importlib.util
import warnings


class UsageError(ValueError):
    """A problem with what the user asked for (a name, a path, a file), not a bug in zfnet.

    The message is one line that says what is wrong and how to fix it.
    """


class ZfnetNote(UserWarning):
    """How a result was made, worth knowing but not wrong (printed by the CLI after success)."""


def note(message: str) -> None:
    warnings.warn(message, ZfnetNote, stacklevel=2)


# the optional parts of zfnet and what installs them (pyproject's extras)
EXTRAS = {
    "sklearn": ("scikit-learn", "experiments"),
    "mlxtend": ("mlxtend", "experiments"),
    "starlette": ("starlette", "explore"),
    "uvicorn": ("uvicorn", "explore"),
    "timm": ("timm", "timm"),
}


def needs(module: str, what: str) -> None:
    """Refuse, in one line naming the extra to install, `what` when the optional `module` is missing."""
    if importlib.util.find_spec(module) is None:
        package, extra = EXTRAS[module]
        raise UsageError(f"{what} needs {package}: pip install 'zfnet[{extra}]' (or pip install {package})")
