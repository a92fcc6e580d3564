"""Compose a primary config of ``conf/`` with a user's overrides, without Hydra's run folders (the
inference entry points write only what they are asked to). Every config problem is one UserError line.

Keys named in ``verbatim`` (animate.py's ``text``) take their value as typed, not as Hydra override
grammar: ``text=The person's smiling, then winking`` is that sentence. A value that is a JSON list of
strings (``text='["smiling.", "winking."]'``) is that list."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

from src.config.schema import SCHEMAS, register_configs, register_resolvers, validate_config
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def split_verbatim(overrides: Sequence[str], verbatim: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """(the overrides for Hydra, {key: value} of the verbatim keys)."""
    rest, values = [], {}
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in verbatim:
            values[key.lstrip("+~")] = _verbatim_value(value)
        else:
            rest.append(arg)
    return rest, values


def _verbatim_value(value: str) -> Any:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError:
            return value
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
    return value


def compose_config(config_name: str, overrides: Sequence[str], verbatim: Sequence[str] = ()):
    """``conf/<config_name>.yaml`` with the overrides, resolved (paths from the repository root and
    the working directory) and validated against its schema. Without overrides (verbatim keys aside)
    a config of the plain defaults list is read by :func:`compose_plain`, without Hydra."""
    from omegaconf import OmegaConf

    overrides, values = split_verbatim(overrides, verbatim)
    register_resolvers()
    try:
        cfg = compose_plain(config_name) if not overrides else None
        if cfg is None:
            cfg = _compose_hydra(config_name, overrides)
        # ${hydra:runtime.*} is not available with compose: resolve paths from the repo root
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = str(Path.cwd())
        for key, value in values.items():
            cfg[key] = value
        OmegaConf.resolve(cfg)
    except UserError:
        raise
    except Exception as e:  # Hydra/OmegaConf errors: keep their first line, which names the key
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        unknown = re.match(r"Could not override '([^']+)'", msg)
        if unknown and "." not in unknown.group(1) and "not in" in str(e.__cause__ or ""):
            raise UserError(f"unknown key '{unknown.group(1)}' ({config_name} takes: {', '.join(top_keys(config_name))}; "
                            f"--help explains them)") from None
        raise UserError(f"bad argument: {msg}") from None
    validate_config(cfg)
    return cfg


def _compose_hydra(config_name: str, overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def compose_plain(config_name: str):
    """What Hydra composes from ``conf/<config_name>.yaml`` without overrides, read with OmegaConf
    alone (importing and running Hydra costs about 0.3 s a command), or None unless the file's
    defaults list is the plain one: its schema, itself, then ``paths: default``."""
    from omegaconf import OmegaConf

    own = OmegaConf.load(ROOT / "conf" / f"{config_name}.yaml")
    schema = SCHEMAS.get(f"{config_name}_schema")
    defaults = OmegaConf.to_container(own.pop("defaults")) if "defaults" in own else None
    if schema is None or defaults != [f"{config_name}_schema", "_self_", {"paths": "default"}]:
        return None
    cfg = OmegaConf.merge(OmegaConf.structured(schema), own,
                          {"paths": OmegaConf.load(ROOT / "conf" / "paths" / "default.yaml")})
    OmegaConf.set_struct(cfg, True)
    return cfg


def top_keys(config_name: str) -> list[str]:
    """The top-level keys ``conf/<config_name>.yaml`` sets (its own lines, not its defaults list)."""
    keys = []
    for line in (ROOT / "conf" / f"{config_name}.yaml").read_text().splitlines():
        key = line.split(":", 1)[0]
        if line and line[0] not in " #-" and ":" in line and key != "defaults":
            keys.append(key)
    return keys
