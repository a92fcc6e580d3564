"""Typed config groups: a constructor takes its settings as dataclasses (``src/config/animator.py``,
``src/config/gan.py``), built from the YAML mapping of each group by :func:`typed_group`."""
from __future__ import annotations

import typing
from dataclasses import fields
from typing import Any

from src.utils.errors import UserError

__all__ = ["typed_group"]


def typed_group(cls, node: Any, what: str):
    """A config group as its dataclass: ``node`` (a mapping, None for the defaults, or already a
    ``cls``); an unknown key is one UserError line naming it."""
    if isinstance(node, cls):
        return node
    from src.utils.config import plain

    values = plain(node) if node is not None else {}
    if not isinstance(values, dict):
        raise UserError(f"{what} must be a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{what} has no setting {unknown[0]!r} (it has {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        values[key] = _checked(value, hints.get(key), f"{what}.{key}")
    return cls(**values)


_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _checked(value: Any, hint: Any, name: str) -> Any:
    """``value`` as the field's scalar type (an integral number where an int is asked, any number
    where a float is); a value of another type is one UserError line. Other types pass unchecked."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    if optional:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else None
    if value is None or hint not in _SCALARS:
        if value is None and hint in _SCALARS and not optional:
            raise UserError(f"{name} must be {_SCALARS[hint]}, got null")
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
        value = int(value) if ok else value
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise UserError(f"{name} must be {_SCALARS[hint]}, got {value!r}")
    return value
