"""Checks of a compact GAN training state (src/embedded/training/gan_state.py) made before any of its
tensors is read: the manifest's size and form, every tensor's shape against the networks its
hyper-parameters describe (bounded before they are built), and each shard's size, sha256 and header.
Each failure is one UserError line."""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from src.utils.errors import UserError

FORMAT = "lgfa-gan-state/1"
MANIFEST = "manifest.json"
MAX_OTHER = 1 << 20             # elements of a tensor no network describes (RNG states, counters)
MAX_MANIFEST = 16 << 20
SHARD_NAME = re.compile(r"^state-\d{2}\.safetensors$")
# dtype name -> (torch dtype, safetensors' code)
DTYPES = {n: (getattr(torch, n), c) for n, c in (("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
           ("float64", "F64"), ("uint8", "U8"), ("int8", "I8"), ("int32", "I32"), ("int64", "I64"), ("bool", "BOOL"))}
MOMENT = re.compile(r"^optimizer_states\.(\d+)\.state\.(\d+)\.(exp_avg|exp_avg_sq|max_exp_avg_sq)$")
# numbers of the networks' settings a manifest may ask for (bounds before anything is built)
_LIMITS = {"resolution": 1024, "channel_max": 1024, "channel_base": 1 << 16, "z_dim": 2048, "w_dim": 2048,
           "num_layers": 16}


# ---------------------------------------------------------------- the networks a checkpoint describes
def _check_limits(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k in _LIMITS and not (isinstance(v, int) and 0 <= v <= _LIMITS[k]):
                raise UserError(f"{where}.{k} = {v!r} is outside 0..{_LIMITS[k]}")
            _check_limits(v, f"{where}.{k}")


def reference_shapes(hparams: Mapping[str, Any]) -> tuple[dict[str, tuple], set[str], list[list[tuple]]]:
    """(state_dict shapes of G, G_ema and D; the names that are weights; the shapes of each optimiser's
    parameters, G's then D's) of the networks ``hparams`` describe, bounded before they are built."""
    from src.stylegan import Discriminator, Generator
    from src.utils.io import check_sidecar_values

    nets = {"resolution": hparams.get("resolution"), "G_kwargs": hparams.get("G_kwargs") or {},
            "D_kwargs": hparams.get("D_kwargs") or {}}
    check_sidecar_values(nets, "the state's hyper_parameters")
    _check_limits(nets, "hyper_parameters")
    res = nets["resolution"]
    if not isinstance(res, int) or res < 8 or res & (res - 1):
        raise UserError(f"the state's hyper_parameters.resolution {res!r} is not a power of two >= 8")
    try:
        G = Generator(c_dim=0, img_resolution=res, img_channels=3, **nets["G_kwargs"])
        D = Discriminator(c_dim=0, img_resolution=res, img_channels=3, **nets["D_kwargs"])
    except (TypeError, ValueError, KeyError) as e:
        raise UserError(f"the state's hyper_parameters describe no network ({e})") from None
    shapes, weights = {}, set()
    for prefix, net in (("G.", G), ("G_ema.", G), ("D.", D)):
        shapes.update({f"{prefix}{k}": tuple(v.shape) for k, v in net.state_dict().items()})
        weights.update(f"{prefix}{k}" for k, _ in net.named_parameters())
    return shapes, weights, [[tuple(p.shape) for p in net.parameters()] for net in (G, D)]



def load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not folder.is_dir():
        raise UserError(f"{folder}: no such state folder")
    if not path.is_file():
        raise UserError(f"{path}: missing (not a compact GAN state folder)")
    if path.stat().st_size > MAX_MANIFEST:
        raise UserError(f"{path}: {path.stat().st_size} bytes, over the {MAX_MANIFEST} a manifest may have")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not a {FORMAT} manifest")
    for key, kind in (("shards", list), ("tensors", dict), ("checkpoint", dict)):
        if not isinstance(manifest.get(key), kind):
            raise UserError(f"{path}: '{key}' is missing or not a {kind.__name__}")
    return manifest


def _expected(name: str, shapes: Mapping[str, tuple], opt_shapes: list[list[tuple]]) -> Optional[tuple]:
    """The shape the networks give tensor ``name`` (None: not a network tensor)."""
    if name.startswith("state_dict.") and name[len("state_dict."):] in shapes:
        return shapes[name[len("state_dict."):]]
    m = MOMENT.match(name)
    if m:
        i, j = int(m.group(1)), int(m.group(2))
        if i >= len(opt_shapes) or j >= len(opt_shapes[i]):
            raise UserError(f"manifest: {name} names a parameter the networks do not have")
        return opt_shapes[i][j]
    return None


def check_table(manifest: dict, hparams: Any) -> None:
    """Every tensor's dtype, shape and shard against the networks, before any tensor is read."""
    if not isinstance(hparams, dict):
        raise UserError("manifest: the checkpoint has no hyper_parameters")
    shapes, _, opt_shapes = reference_shapes(hparams)
    table, n_shards = manifest["tensors"], len(manifest["shards"])
    for name, e in table.items():
        if not isinstance(e, dict) or not isinstance(e.get("shape"), list) or e.get("dtype") not in DTYPES:
            raise UserError(f"manifest: the entry of {name} is malformed")
        shape = tuple(e["shape"])
        if not all(isinstance(d, int) and 0 <= d <= 1 << 31 for d in shape):
            raise UserError(f"manifest: {name} has the shape {list(shape)}")
        want = _expected(name, shapes, opt_shapes)
        if want is not None and shape != want:
            raise UserError(f"manifest: {name} is {list(shape)}, the networks of its hyper_parameters have {list(want)}")
        if want is None and math.prod(shape) > MAX_OTHER:
            raise UserError(f"manifest: {name} has {math.prod(shape)} elements, over {MAX_OTHER} for a tensor "
                            "no network describes")
        if e.get("stored") is None:
            if not MOMENT.match(name) or name.endswith("_sq"):
                raise UserError(f"manifest: {name} is left out, and only Adam's first moment may be")
        elif "same_as" in e:
            twin = table.get(e["same_as"])
            if not (isinstance(twin, dict) and "same_as" not in twin and [twin.get(k) for k in ("shape", "stored")]
                    == [e["shape"], e["stored"]]):
                raise UserError(f"manifest: {name} is the same as {e['same_as']!r}, which is not a stored twin")
        elif e["stored"] not in DTYPES or not (isinstance(e.get("shard"), int) and 0 <= e["shard"] < n_shards):
            raise UserError(f"manifest: {name} has no valid stored dtype or shard")
    missing = sorted(f"state_dict.{k}" for k in shapes if f"state_dict.{k}" not in table)
    if missing:
        raise UserError(f"manifest: the state has no {missing[0]}")


def check_shard(folder: Path, i: int, entry: Any, table: Mapping[str, dict]) -> Path:
    """A shard's presence, size, sha256 and header against the manifest."""
    if not (isinstance(entry, dict) and isinstance(entry.get("file"), str) and SHARD_NAME.match(entry["file"])):
        raise UserError(f"manifest: shard {i} is malformed")
    path = folder / entry["file"]
    if not path.is_file():
        raise UserError(f"{path}: missing shard {i} of the state (copy every file of the state folder)")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise UserError(f"{path}: {size} bytes, the manifest says {entry.get('bytes')} (corrupt or cut short)")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    if h.hexdigest() != entry.get("sha256"):
        raise UserError(f"{path}: sha256 differs from the manifest's (corrupt shard)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n)) if n <= min(size - 8, 1 << 24) else None
    mine = {k: e for k, e in table.items() if e.get("shard") == i and e.get("stored") and "same_as" not in e}
    if header is None or set(header) - {"__metadata__"} != set(mine):
        raise UserError(f"{path}: its tensors are not the ones the manifest lists for shard {i}")
    for k, e in mine.items():
        if header[k].get("dtype") != DTYPES[e["stored"]][1] or header[k].get("shape") != e["shape"]:
            raise UserError(f"{path}: {k} is stored as {header[k].get('dtype')} {header[k].get('shape')}, "
                            f"the manifest says {e['stored']} {e['shape']}")
    return path
