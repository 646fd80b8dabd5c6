"""Settings: every knob that changes a method's result, declared once, as one frozen value beside the method
(issue 34). The CLI's flags and help, the pipelines, the report's resume key and the explorer's request parsing are
derived from the class; a default is written once (the field's), a bad value is refused once (`check`), with the
same one line wherever it came from.

    @dataclass(frozen=True)
    class OcclusionSettings(Settings):
        window: int = knob(32, "the grey square's side, model-input pixels", low=1)

A field's type says what it takes (`int`, `float` - finite -, `bool`, `str`, a `Literal` of choices, a
`tuple[str, ...]`, any of them `| None`); `knob` adds its help text and its range. Cross-field and input-dependent
rules are methods of the class. `Run` holds what never changes a result (device, batch size, workers, progress).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal, TypeVar

import torch

from .errors import UsageError

S = TypeVar("S", bound="Settings")
_NONE_WORDS = ("none", "null")


def knob(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], str] | None = None,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
) -> Any:
    """A settings field: its default, its help (what it is, its unit), its range (`low <= v <= high`, `v > above`),
    and for types the annotation cannot describe a `parse` (text -> value, raising UsageError) and a `check`
    (value -> "" or what is wrong). `flag`: the CLI flag when not `--<name>`; `aliases`: older flags."""
    meta: dict[str, Any] = {"help": help, "low": low, "high": high, "above": above, "parse": parse, "check": check}
    meta |= {"flag": flag, "aliases": aliases}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Field:
    """One knob as the derived interfaces see it."""

    name: str
    default: Any
    hint: Any
    help: str
    low: float | None
    high: float | None
    above: float | None
    parse: Callable[[str], Any] | None
    check: Callable[[Any], str] | None
    flag: str
    aliases: tuple[str, ...]

    @property
    def optional(self) -> bool:
        return type(None) in typing.get_args(self.hint)

    @property
    def base(self) -> Any:
        """The type without `| None`."""
        args = [a for a in typing.get_args(self.hint) if a is not type(None)]
        if typing.get_origin(self.hint) in (typing.Union, types.UnionType) and len(args) == 1:
            return args[0]
        return self.hint

    @property
    def choices(self) -> tuple | None:
        return typing.get_args(self.base) if typing.get_origin(self.base) is Literal else None

    def rule(self) -> str:
        """The allowed values in words (for messages and help)."""
        base, words = self.base, ""
        if self.choices is not None:
            words = "one of " + ", ".join(map(str, self.choices))
        elif base is bool:
            words = "true or false"
        elif base in (int, float):
            kind = "an integer" if base is int else "a finite number"
            bounds = []
            if self.low is not None:
                bounds.append(f">= {_num(self.low)}")
            if self.above is not None:
                bounds.append(f"> {_num(self.above)}")
            if self.high is not None:
                bounds.append(f"<= {_num(self.high)}")
            words = kind + (" " + " and ".join(bounds) if bounds else "")
        elif typing.get_origin(base) is tuple:
            words = "a list of names"
        else:
            words = "text"
        return words + (" or none" if self.optional else "")

    def problem(self, value: Any) -> str:
        """ "" when `value` is allowed, else what is wrong with it."""
        if value is None:
            return "" if self.optional else f"must be {self.rule()}"
        if self.check is not None:
            return self.check(value)
        base = self.base
        if self.choices is not None:
            return "" if value in self.choices else f"must be {self.rule()}"
        if base is bool:
            return "" if isinstance(value, bool) else f"must be {self.rule()}"
        if base in (int, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"must be {self.rule()}"
            if base is int and not float(value).is_integer():
                return f"must be {self.rule()}"
            if not math.isfinite(value):
                return f"must be {self.rule()}"
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                return f"must be {self.rule()}"
            if self.above is not None and value <= self.above:
                return f"must be {self.rule()}"
            return ""
        if typing.get_origin(base) is tuple:
            ok = isinstance(value, tuple) and all(isinstance(v, str) and v for v in value)
            return "" if ok else f"must be {self.rule()}"
        if base is str:
            return "" if isinstance(value, str) and value else "must be non-empty text"
        return ""

    def normal(self, value: Any) -> Any:
        """The value in its canonical form: a float field's int as float, a list as a tuple."""
        if value is None:
            return None
        if self.base is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if self.base is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, list):
            return tuple(value)
        return value

    def from_text(self, text: str) -> Any:
        """A value from the command line or a URL query (raises UsageError in the settings' words)."""
        if self.optional and text.strip().lower() in _NONE_WORDS:
            return None
        if self.parse is not None:
            return self.parse(text)
        base = self.base
        try:
            if self.choices is not None or base is str:
                return text
            if base is bool:
                low = text.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            if base is int:
                return int(text)
            if base is float:
                return float(text)
            if typing.get_origin(base) is tuple:
                return tuple(v.strip() for v in text.split(",") if v.strip())
        except ValueError:
            pass
        return _Unparsed(text)


class _Unparsed(str):
    """Text that is not of the field's type: refused by `check` with the field's rule."""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


_FIELDS: dict[type, list[Field]] = {}


@dataclass(frozen=True)
class Settings:
    """The base of every method's settings: a frozen dataclass checked when made (`check`), with `to_json`,
    `from_json`, `fingerprint` (the report's resume key) and `build` (a settings value and keyword overrides)."""

    method: ClassVar[str] = ""  # the method's name, for messages
    renamed: ClassVar[dict[str, str]] = {}  # older keyword -> the field it became

    def __post_init__(self) -> None:
        for f in self.fields():
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, f.normal(value))
        self.check()

    @classmethod
    def fields(cls) -> list[Field]:
        """The fields as `Field` records (read from the class once)."""
        if cls not in _FIELDS:
            _FIELDS[cls] = cls._read_fields()
        return _FIELDS[cls]

    @classmethod
    def _read_fields(cls) -> list[Field]:
        hints = typing.get_type_hints(cls)
        out = []
        for f in fields(cls):
            m = f.metadata
            out.append(
                Field(
                    f.name,
                    f.default,
                    hints[f.name],
                    m.get("help", ""),
                    m.get("low"),
                    m.get("high"),
                    m.get("above"),
                    m.get("parse"),
                    m.get("check"),
                    m.get("flag") or "--" + f.name.replace("_", "-"),
                    m.get("aliases", ()),
                )
            )
        return out

    @classmethod
    def field(cls, name: str) -> Field:
        for f in cls.fields():
            if f.name == name:
                return f
        raise KeyError(name)

    def check(self) -> None:
        """Refuse a bad value: one line naming the method, the field, the value and what is allowed."""
        for f in self.fields():
            value = getattr(self, f.name)
            problem = f.problem(value)
            if problem:
                shown = str(value) if isinstance(value, _Unparsed) else repr(value)
                raise UsageError(f"{self.method} setting {f.name}={shown}: {problem} ({f.help})")

    def to_json(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in self.fields()}

    @classmethod
    def from_json(cls: type[S], d: dict[str, Any]) -> S:
        return cls.build(None, **d)

    def fingerprint(self) -> str:
        """A short hash of the settings (with the class name): the report's resume key for a stage."""
        text = json.dumps({"class": type(self).__name__, **self.to_json()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self: S, **changes: Any) -> S:
        return type(self).build(self, **changes)

    @classmethod
    def build(cls: type[S], settings: S | None = None, **changes: Any) -> S:
        """`settings` (or the defaults) with `changes`; an unknown name is one line listing the known ones."""
        names = [f.name for f in fields(cls)]
        for k in changes:
            if k not in names:
                hint = f" (now {cls.renamed[k]}=)" if k in cls.renamed else ""
                raise UsageError(f"{cls.method} has no setting {k!r}{hint}; its settings: {', '.join(names)}")
        if settings is not None and not isinstance(settings, cls):
            raise UsageError(f"{cls.method} takes settings={cls.__name__}(...), got {type(settings).__name__}")
        base = settings if settings is not None else cls()
        return base if not changes else dataclasses.replace(base, **changes)

    @classmethod
    def parse(cls, texts: dict[str, str]) -> dict[str, Any]:
        """Field values from text by field name (a URL's query); other names are left out, values unchecked
        (`build` checks them)."""
        known = {f.name: f for f in cls.fields()}
        for k in texts:
            if k in cls.renamed:
                cls.build(None, **{k: None})  # the renamed setting's one line
        return {k: known[k].from_text(v) for k, v in texts.items() if k in known}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    return v


@dataclass(frozen=True)
class Run:
    """How a method is carried out; nothing here changes a result (issue 34): the device, the batch size, the
    data-loading workers, the progress bar. (Under torchrun the pipelines still take the process group apart.)"""

    device: torch.device | str = "cpu"
    batch_size: int | None = None  # images per forward (None: the method's own choice from the input size)
    workers: int = 0  # data-loading processes for datasets read from files
    progress: bool = False

    def __post_init__(self) -> None:
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise UsageError(f"batch size {self.batch_size!r} must be an integer >= 1")
        if not isinstance(self.workers, int) or self.workers < 0:
            raise UsageError(f"workers {self.workers!r} must be an integer >= 0")
