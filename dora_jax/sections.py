"""Typed config sections: a component describes its section once, as a frozen dataclass.

    @dataclasses.dataclass(frozen=True)
    class OptimConfig:
        lr: float = 2e-5  # peak learning rate
        def __post_init__(self):
            require(self.lr > 0, "lr", self.lr, "use a positive learning rate, e.g. 1e-5")

    c.optim = sections.defaults(OptimConfig)     # a config file: the defaults, then its own changes
    optim = sections.parse(OptimConfig, c.optim, "optim")   # the component: typed, checked

The dataclass holds the defaults and the meaning of every field (its comment); `parse` checks
that the section names only known fields with values of the declared type, then the class's own
`__post_init__` checks ranges and choices. Every failure is a `ConfigError` naming the field,
the value and the fix, before any work starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from typing import Any, Mapping, TypeVar

import ml_collections

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field and how to fix it."""


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def require(ok: bool, field: str, value: Any, fix: str) -> None:
    """In `__post_init__`: raise unless `ok`; `parse` prefixes the section path to `field`."""
    if not ok:
        raise _FieldError(field, f"{field}={value!r}: {fix}")


def defaults(cls: type, **changes) -> ml_collections.ConfigDict:
    """The section's defaults (with `changes`) as the ConfigDict a config file edits."""
    return ml_collections.ConfigDict(dataclasses.asdict(dataclasses.replace(cls(), **changes)))


def parse(cls: type[T], section: Mapping[str, Any] | Any, path: str) -> T:
    """`section` (a ConfigDict, dict or an instance of `cls`) as a checked `cls`; `path` names it in errors."""
    if isinstance(section, cls):
        return section
    values = dict(section.items())
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in values:
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f"did you mean {path}.{close[0]}?" if close else f"known fields: {', '.join(fields)}."
            raise ConfigError(f"config.{path}.{name} is not a field of config.{path}; {hint}")
    hints = _type_hints(cls)
    try:
        return cls(**{name: _coerce(path, name, value, hints[name]) for name, value in values.items()})
    except _FieldError as e:
        raise ConfigError(f"config.{path}.{e}") from None


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """The fields' declared types (resolved once per class: sections are parsed on every batch)."""
    return typing.get_type_hints(cls)


def _coerce(path: str, name: str, value: Any, hint: Any) -> Any:
    """`value` as the field's declared type (int -> float is fine; a string for a number is not); a nested
    section (a field whose type is a dataclass) is parsed in turn."""
    want = hint if isinstance(hint, type) else typing.get_origin(hint)
    if dataclasses.is_dataclass(want) and not isinstance(value, want):
        return parse(want, value, f"{path}.{name}")
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is tuple and isinstance(value, list):
        return tuple(tuple(v) if isinstance(v, list) else v for v in value)
    if isinstance(want, type) and not isinstance(value, want) and want is not typing.Any:
        kind = want.__name__
        raise ConfigError(f"config.{path}.{name}={value!r} is a {type(value).__name__}; it must be a {kind} "
                          f"(e.g. --config.{path}.{name}={_example(want)}).")
    return value


def _example(kind: type) -> str:
    return {bool: "True", int: "4", float: "0.5", str: "NAME", tuple: "'(...)'"}.get(kind, "...")
