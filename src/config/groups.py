"""Typed config groups: a constructor takes its settings as dataclasses (``src/config/animator.py``,
``src/config/gan.py``), built from the YAML mapping of each group by :func:`typed_group`."""
from __future__ import annotations

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
    return cls(**values)
