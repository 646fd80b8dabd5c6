"""The user's own code (`--model module:callable`): whatever it raises - an exception in the module, the
builder or the forward, `SystemExit` included - is one line naming the model, the exception and where it was
raised (issue 35). Ctrl-C still interrupts."""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

from .errors import UsageError

_FILES: dict[str, str] = {}  # real path of a user module's file -> its module:callable


def register(module: ModuleType, spec: str) -> None:
    """Remember `module`'s file as the user's code for `spec`."""
    path = getattr(module, "__file__", None)
    if path:
        _FILES[os.path.realpath(path)] = spec


def _user_frame(exc: BaseException) -> tuple[str, traceback.FrameSummary] | None:
    """The innermost traceback frame in a registered user file, with its spec."""
    found = None
    for frame in traceback.extract_tb(exc.__traceback__):
        spec = _FILES.get(os.path.realpath(frame.filename))
        if spec is not None:
            found = (spec, frame)
    return found


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (it called sys.exit)"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def blame(exc: BaseException, what: str = "the model's forward") -> UsageError | None:
    """A one-line error for an exception raised inside the user's code, None for any other."""
    if isinstance(exc, (UsageError, KeyboardInterrupt, GeneratorExit)):
        return None
    hit = _user_frame(exc)
    if hit is None:
        return None
    spec, f = hit
    where = f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}"
    return UsageError(f"--model {spec}: {what} raised {_describe(exc)} at {where}; fix the model's code")


@contextmanager
def running(spec: str, what: str) -> Iterator[None]:
    """Within the block, the user's code's exceptions become `blame`'s one line (`what`: 'the builder', ...)."""
    try:
        yield
    except (UsageError, KeyboardInterrupt):
        raise
    except BaseException as e:  # noqa: BLE001 - SystemExit from the user's code is an error too
        err = blame(e, what)
        if err is None:
            raise
        raise err from None
