"""Load NVIDIA StyleGAN2-ADA network pickles into our Generator without executing any code from the file.

``src/stylegan/restricted_unpickler.py`` reads the pickle into plain data (dicts,
PersistentRecords, tensors). Here the Generator is rebuilt from its ``_init_kwargs`` with our own
classes and every parameter and buffer is copied by name after checking that names and shapes
match exactly.
"""

from __future__ import annotations

from typing import Any, Dict

import torch

from src.stylegan.generator import Generator
from src.stylegan.restricted_unpickler import PERSISTENCE_VERSION, PersistentRecord, Refused, load_pickle_data
from src.utils.errors import UserError
from src.utils.architecture import check_architecture
from src.utils.io import check_sidecar_values

GENERATOR_ARG_NAMES = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs",
                       "synthesis_kwargs")
#: the largest generator a description may ask for: images of 4096 px, 64 mapping layers
MAX_RESOLUTION, MAX_MAPPING_LAYERS = 4096, 64


def check_generator_kwargs(kwargs: dict, shapes: Dict[str, Any], where: str) -> None:
    """Refuse Generator kwargs (of a sidecar or a pickle) beyond sane bounds, or whose network's
    tensors would not have exactly the stored ``shapes`` {name: shape}: checked on the meta device,
    before the Generator is allocated. UserError led by ``where`` (TypeError for unknown arguments)."""
    check_sidecar_values(kwargs, where, "init_kwargs")
    lead = f"{where}: " if where else ""
    resolution = kwargs.get("img_resolution", 1024)
    if not isinstance(resolution, int) or not 4 <= resolution <= MAX_RESOLUTION or resolution & (resolution - 1):
        raise UserError(f"{lead}img_resolution must be a power of two in 4..{MAX_RESOLUTION}, got {resolution!r}")
    mapping = kwargs.get("mapping_kwargs") or {}
    layers = mapping.get("num_layers", 8) if isinstance(mapping, dict) else 8
    if not isinstance(layers, int) or not 1 <= layers <= MAX_MAPPING_LAYERS:
        raise UserError(f"{lead}mapping_kwargs.num_layers must be in 1..{MAX_MAPPING_LAYERS}, got {layers!r}")
    check_architecture(lambda: Generator(**kwargs), shapes, where)


def _plain_data(v):
    """EasyDict/OrderedDict -> dict, tuples -> lists, recursively (kwargs only)."""
    if isinstance(v, dict):
        return {k: _plain_data(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain_data(x) for x in v]
    return v


def record_tensors(record: PersistentRecord, prefix: str = "") -> Dict[str, torch.Tensor]:
    """All persistent parameters and buffers of a record tree, named as in a state_dict."""
    state = record.state
    if not isinstance(state, dict):
        raise Refused(f"{record.class_name} has no state dict")
    out: Dict[str, torch.Tensor] = {}
    nonpersistent = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in nonpersistent):
                continue
            if not isinstance(t, torch.Tensor):
                raise Refused(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is None:
            continue
        if not isinstance(child, PersistentRecord):
            raise Refused(f"sub-module {prefix}{name} is a {type(child).__name__}, not a persistent module")
        out.update(record_tensors(child, prefix + name + "."))
    return out


def generator_kwargs(record: PersistentRecord) -> dict:
    """The Generator constructor kwargs of an official record (positional args mapped to names)."""
    state = record.state
    args = state.get("_init_args") or ()
    kwargs = state.get("_init_kwargs") or {}
    if not isinstance(args, (tuple, list)) or not isinstance(kwargs, dict):
        raise Refused("Generator _init_args/_init_kwargs are malformed")
    if len(args) > len(GENERATOR_ARG_NAMES):
        raise Refused(f"Generator has {len(args)} positional arguments, expected at most {len(GENERATOR_ARG_NAMES)}")
    out = dict(zip(GENERATOR_ARG_NAMES, args))
    out.update(kwargs)
    out = _plain_data(out)
    # The StyleGAN2 port in NVlabs/stylegan3 (networks_stylegan2) takes the synthesis kwargs flat
    # (Generator(..., mapping_kwargs, **synthesis_kwargs)) plus fused_modconv_default, a pure
    # speed switch; same module names and maths, so fold them into our layout.
    flat = {k: out.pop(k) for k in list(out) if k not in GENERATOR_ARG_NAMES}
    flat.pop("fused_modconv_default", None)
    if flat:
        out["synthesis_kwargs"] = {**(out.get("synthesis_kwargs") or {}), **flat}
    return out


def copy_tensors_into(module: torch.nn.Module, tensors: Dict[str, torch.Tensor], what: str) -> None:
    """Copy by name after checking names and shapes match exactly (UserError lists mismatches)."""
    own = module.state_dict()
    problems = []
    for name in own:
        if name not in tensors:
            problems.append(f"missing {name}")
        elif tuple(tensors[name].shape) != tuple(own[name].shape):
            problems.append(f"{name} has shape {list(tensors[name].shape)}, expected {list(own[name].shape)}")
    problems += [f"unexpected {name}" for name in tensors if name not in own]
    if problems:
        more = f" (+{len(problems) - 4} more)" if len(problems) > 4 else ""
        raise UserError(f"{what}: weights do not match the architecture: {'; '.join(problems[:4])}{more}")
    with torch.no_grad():
        for name, dst in own.items():
            dst.copy_(tensors[name].to(dst.dtype))


def select_generator_record(data: Any, path) -> PersistentRecord:
    """G_ema of a snapshot dict (else G), or a bare persistent Generator."""
    if isinstance(data, PersistentRecord):
        rec = data
    elif isinstance(data, dict):
        rec = data.get("G_ema")
        if rec is None:
            rec = data.get("G")
        if rec is None:
            raise UserError(f"{path}: network pickle has neither 'G_ema' nor 'G' (keys: {', '.join(map(str, data))})")
        if not isinstance(rec, PersistentRecord):
            raise UserError(f"{path}: 'G_ema'/'G' is a {type(rec).__name__}, not a persistent network object")
    else:
        raise UserError(f"{path}: pickle holds a {type(data).__name__}, not a StyleGAN2-ADA snapshot")
    meta = rec.meta
    if meta.get("type") != "class" or meta.get("version") != PERSISTENCE_VERSION:
        raise UserError(f"{path}: unsupported persistent object (type {meta.get('type')!r}, version "
                        f"{meta.get('version')!r}; expected 'class', {PERSISTENCE_VERSION})")
    if rec.class_name != "Generator":
        raise UserError(f"{path}: the network is a {rec.class_name!r}, not a 'Generator'")
    return rec


def load_nvidia_pickle(path, device="cpu") -> Generator:
    """NVIDIA StyleGAN2-ADA ``*.pkl`` -> our Generator (eval mode) on ``device``."""
    data = load_pickle_data(path)
    rec = select_generator_record(data, path)
    try:
        kwargs = generator_kwargs(rec)
        tensors = record_tensors(rec)
    except Refused as e:
        raise UserError(f"{path}: {e}") from None
    try:
        check_generator_kwargs(kwargs, {k: tuple(v.shape) for k, v in tensors.items()}, "")
        G = Generator(**kwargs)
    except UserError as e:
        raise UserError(f"{path}: not a supported StyleGAN2-ADA generator: {e}") from None
    except TypeError as e:
        raise UserError(f"{path}: not a supported StyleGAN2-ADA generator: {str(e).splitlines()[0]}") from None
    copy_tensors_into(G, tensors, str(path))
    return G.eval().to(device)
