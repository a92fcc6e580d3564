"""The ``trainer:`` config node checked against pytorch_lightning.Trainer's own signature before any
model loads: a key Lightning does not know, one that train.py sets from another group, or a value of
the wrong type is one UserError line naming it and what fits."""
from __future__ import annotations

import difflib
import typing
from typing import Any

from src.utils.errors import UserError

# Trainer arguments train.py sets itself, and where the user sets them instead
TRAINER_OWN = {"accelerator": "hardware.accelerator", "devices": "hardware.devices", "num_nodes": "hardware.num_nodes",
                "strategy": "hardware.strategy", "precision": "hardware.precision",
                "deterministic": "hardware.deterministic", "logger": "logger=<csv|wandb|none>",
                "callbacks": "callbacks=<default|none> or callbacks.<name>.*", "default_root_dir": "name= or paths.log_dir",
                "plugins": "nothing (train.py sets it)"}


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " | ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _accepts(value: Any, tp: Any) -> bool:
    """Whether a config value (plain python) fits the Trainer argument's annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_accepts(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_accepts(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(tp, type) and isinstance(value, tp)


def check_trainer_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer:`` node as pl.Trainer keyword arguments; a key Lightning does not know, one train.py
    sets from another group, or a value of the wrong type raises UserError naming it and what fits."""
    import pytorch_lightning as pl

    try:
        hints = typing.get_type_hints(pl.Trainer.__init__)
    except Exception:  # annotations Lightning's version cannot evaluate here: leave the checks to it
        return kwargs
    hints.pop("return", None)
    for key, value in kwargs.items():
        if key in TRAINER_OWN:
            raise UserError(f"trainer.{key} is set by train.py: use {TRAINER_OWN[key]}")
        if key not in hints:
            near = difflib.get_close_matches(key, list(hints), n=3)
            raise UserError(f"trainer.{key} is not a pytorch_lightning.Trainer argument"
                            + (f" (did you mean {' or '.join('trainer.' + n for n in near)}?)" if near else
                               f"; accepted: {', '.join(k for k in hints if k not in TRAINER_OWN)}"))
        if not _accepts(value, hints[key]):
            raise UserError(f"trainer.{key}={value!r}: expected {_type_name(hints[key])}")
    return kwargs
