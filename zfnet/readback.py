"""One reader for every file zfnet reads back (report.json, stage results, settings, recipes, metrics, parts files,
markers): parsed and checked against a small schema, so that a damaged file is either redone by the caller
(`Damaged` is caught: a stage, a cache) or one line naming the file and the fix - never a traceback, and never
silently "reused".

A schema is a type (or a tuple of types), `Finite` (a finite number), a list holding one schema (every item
matches it), or a dict of key -> schema, where a key ending in "?" is optional. Extra keys are allowed.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .errors import UsageError


class Damaged(UsageError):
    """A file zfnet wrote (or reads) is unreadable or does not have the shape it should."""


class Finite:
    """Schema: a finite int or float (never a bool)."""


def problem(value: Any, schema: Any, where: str = "") -> str | None:
    """What is wrong with `value` against `schema` (None when nothing is)."""
    at = where or "the top level"
    if schema is Any:
        return None
    if schema is Finite:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"{at} is {value!r}, not a finite number"
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{at} is {_NAMES.get(type(value), type(value).__name__)}, not a list"
        for i, item in enumerate(value):
            p = problem(item, schema[0], f"{where}[{i}]")
            if p:
                return p
        return None
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{at} is {_NAMES.get(type(value), type(value).__name__)}, not an object"
        for key, sub in schema.items():
            optional = key.endswith("?")
            name = key.rstrip("?")
            if name not in value:
                if optional:
                    continue
                return f"{where + '.' if where else ''}{name} is missing"
            if optional and value[name] is None:
                continue
            p = problem(value[name], sub, f"{where + '.' if where else ''}{name}")
            if p:
                return p
        return None
    types = schema if isinstance(schema, tuple) else (schema,)
    wanted = " or ".join(_NAMES.get(t, t.__name__) for t in types)
    if isinstance(value, bool) and bool not in types:
        return f"{at} is {value!r}, not {wanted}"
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return None
    if not isinstance(value, types):
        return f"{at} is {_NAMES.get(type(value), type(value).__name__)}, not {wanted}"
    return None


_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _reject_constant(token: str):
    raise ValueError(f"{token} is not a JSON number")


def parse_json(text: str, path: str, schema: Any, fix: str) -> Any:
    """`text` (the content of `path`) parsed and checked; `Damaged` naming the file and `fix` otherwise."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except ValueError as e:
        raise Damaged(f"{path} is damaged (not JSON: {str(e).splitlines()[0]}); {fix}") from None
    p = problem(value, schema)
    if p:
        raise Damaged(f"{path} is damaged ({p}); {fix}")
    return value


def read_text(path: str | os.PathLike, *, fix: str, what: str = "") -> str:
    """The UTF-8 text of `path`; `Damaged` (one line naming the file - as `what` when given - and `fix`)
    when it cannot be read or is not UTF-8 text (a binary file, a folder, no permission)."""
    path = os.fspath(path)
    name = what or path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise Damaged(f"cannot read {name} ({e.strerror or e}); {fix}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Damaged(f"{name} is not UTF-8 text; {fix}") from None


def read_json(path: str | os.PathLike, schema: Any = Any, *, fix: str) -> Any:
    """The JSON file at `path`, checked against `schema`; `Damaged` (one line: the file, what is wrong, `fix`)."""
    path = os.fspath(path)
    return parse_json(read_text(path, fix=fix), path, schema, fix)


def read_json_or_none(path: str | os.PathLike, schema: Any = Any) -> Any:
    """The JSON file at `path` when it is there and sound, else None (for caches and results that are redone)."""
    if not os.path.isfile(path):
        return None
    try:
        return read_json(path, schema, fix="")
    except Damaged:
        return None


__all__ = ["Damaged", "Finite", "parse_json", "problem", "read_json", "read_json_or_none", "read_text"]
