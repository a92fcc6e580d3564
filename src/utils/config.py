"""Plain-data views of configs: what checkpoints and exported files store (no DictConfig or Enum
objects, which would break ``weights_only`` loading), and dotted-key access into nested dicts."""
from __future__ import annotations

import enum
from typing import Any, Mapping


def plain(node: Any) -> Any:
    """DictConfig / ListConfig / Enum (recursively, inside dicts and lists too) -> plain python."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if isinstance(node, Mapping):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(plain(v) for v in node)
    return node.value if isinstance(node, enum.Enum) else node


def get_dotted(d: Any, dotted: str, default: Any = None) -> Any:
    """d['a']['b'] for 'a.b'; ``default`` where a level is missing or None."""
    cur = d
    for part in dotted.split("."):
        if not isinstance(cur, Mapping) or part not in cur or cur[part] is None:
            return default
        cur = cur[part]
    return cur


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    """d['a']['b'] = value for 'a.b', creating the levels that are missing."""
    parts = dotted.split(".")
    cur = d
    for part in parts[:-1]:
        if not isinstance(cur.get(part), dict):
            cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value


def flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
