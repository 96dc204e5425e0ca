"""Does a recipe value fit its dataclass field? YAML values checked against the field's type annotation before
HfArgumentParser sees them, so a wrong type is one clear line (`learning_rate: abc`), not a parser traceback."""

from __future__ import annotations

import types
import typing
from typing import Any


def coerce_number(value: Any, expected) -> Any:
    """YAML 1.1 reads `3e-5` as a string; accept it where the field is a float (and `true` where it is a str)."""
    if isinstance(value, bool) and expected is not None and matches("x", expected) and not matches(value, expected):
        return str(value).lower()
    if isinstance(value, str) and expected is not None and matches(1.5, expected) and not matches(value, expected):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def field_type(cls: type, name: str):
    hints = typing.get_type_hints(cls)
    return hints.get(name)


def matches(value: Any, expected) -> bool:
    origin = typing.get_origin(expected)
    if expected is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(expected))
    if origin is typing.Literal:
        return value in typing.get_args(expected)
    if expected is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(expected, type):
        if issubclass(expected, str):  # enums in TrainingArguments are str subclasses; accept their values
            return isinstance(value, str)
        return isinstance(value, expected)
    return True  # exotic annotations: let the dataclass validate


def describe(expected) -> str:
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(expected))
    if expected is type(None):
        return "null"
    return getattr(expected, "__name__", str(expected))
