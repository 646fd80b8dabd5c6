"""A method's settings class as command-line flags (issue 34): one flag per field, its help and default from the
field, read back into one settings value whose `check` gives the same one line as the Python API and the explorer.
A flag left out takes the class's default (the parser's own default is None, so "not given" is known)."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import Field, Settings

PREFIX = "setting_"


def shown(value: Any) -> str:
    """A default as the help shows it (and as a user would type it)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "empty"
    return str(value)


def flag_help(f: Field) -> str:
    return f"{f.help}; {f.rule()} (default: {shown(f.default)})".replace("%", "%%")


def add_settings(p: argparse.ArgumentParser, cls: type[Settings], *, skip: tuple[str, ...] = ()) -> None:
    """Add `cls`'s fields (less `skip`) to `p` as one group of flags."""
    group = p.add_argument_group(f"{cls.method} settings ({cls.__name__}; the Python API's keywords)")
    for f in cls.fields():
        if f.name in skip:
            continue
        if f.base is bool:
            group.add_argument(
                f.flag,
                *f.aliases,
                dest=PREFIX + f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=flag_help(f),
            )
        else:
            group.add_argument(
                f.flag, *f.aliases, dest=PREFIX + f.name, default=None, metavar=f.name.upper(), help=flag_help(f)
            )


def given(args: argparse.Namespace, cls: type[Settings]) -> dict[str, Any]:
    """The settings flags given on the command line, as values of their fields' types (unchecked)."""
    out: dict[str, Any] = {}
    for f in cls.fields():
        v = getattr(args, PREFIX + f.name, None)
        if v is not None:
            out[f.name] = v if isinstance(v, bool) else f.from_text(v)
    return out


def settings_from_args(args: argparse.Namespace, cls: type[Settings], **defaults: Any) -> Any:
    """One `cls` value from the flags; `defaults` stand in for flags not given (a command's own defaults, such
    as the report's window fitted to the input)."""
    return cls.build(None, **{**defaults, **given(args, cls)})
