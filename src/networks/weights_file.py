"""Small networks stored as <stem>.safetensors (weights) + <stem>.json (class, init kwargs, extras).

Reading never executes code from the files (safetensors + JSON), and allocates nothing before the
sidecar's numbers are checked against the tensors the weights file stores (``build_checked``);
writes are atomic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from src.utils.errors import UserError
from src.utils.architecture import check_architecture, stored_shapes
from src.utils.io import atomic_write, atomic_write_text, check_input_file, check_sidecar_values


def weights_stem(path: str | Path) -> Path:
    """'x', 'x.safetensors' or 'x.json' -> Path('x')."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def net_files(path: str | Path) -> tuple[Path, Path]:
    """(<stem>.safetensors, <stem>.json) of a stored network given either name or the stem."""
    stem = weights_stem(path)
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_net(net: nn.Module, path: str | Path, meta: dict[str, Any], dtype: Optional[torch.dtype] = None) -> Path:
    """Write <stem>.safetensors and <stem>.json (``meta``) atomically; returns the .safetensors path.

    dtype: cast floating tensors (e.g. torch.float16 to halve the file); loading casts them back.
    """
    from safetensors.torch import save_file

    weights, meta_path = net_files(path)
    state = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        state[k] = (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
    with atomic_write(weights) as tmp:
        save_file(state, str(tmp))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    return weights


def read_net_files(path: str | Path, what: str) -> tuple[dict[str, Any], Path]:
    """(meta dict, weights path) of a stored network; ``what`` names it in errors ('oracle')."""
    weights, meta_path = (check_input_file(p, what) for p in net_files(path))
    if not weights.is_file() or not meta_path.is_file():
        raise UserError(f"{what} weights not found: need {weights} and {meta_path}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("init_kwargs"), dict):
            raise KeyError("init_kwargs")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is not a{'n' if what[0] in 'aeiou' else ''} {what} description ({e})") from None
    check_sidecar_values(meta["init_kwargs"], str(meta_path), "init_kwargs")
    return meta, weights


def build_checked(build: Callable[[], nn.Module], weights: Path, what: str) -> nn.Module:
    """``build()``, once the network it describes has the very tensor shapes ``weights`` stores (built
    on the meta device first: a sidecar's sizes never allocate more than the file holds). A TypeError
    of the constructor (an unknown argument) becomes one line naming the sidecar."""
    meta_path = net_files(weights)[1]
    try:
        check_architecture(build, stored_shapes(weights), str(meta_path))
        return build()
    except TypeError as e:
        raise UserError(f"{meta_path}: bad {what} arguments ({e})") from None


def load_net_state(net: nn.Module, weights: Path) -> nn.Module:
    """Load ``weights`` into ``net`` (floating tensors cast to the net's dtypes); one-line errors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    own = net.state_dict()
    state = {k: (v.to(own[k].dtype) if k in own and v.is_floating_point() else v) for k, v in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise UserError(f"{weights} does not match its architecture: {str(e).splitlines()[0]}") from None
    return net
