"""The files of a real-face folder: the image list, split lists, latents and captions.

* ``root``: a folder searched recursively for .jpg .jpeg .png .webp .bmp .tif .tiff (any case);
  hidden files/folders (``.name``) are ignored. "The sorted file list" below is the sorted list of
  these relative POSIX paths.
* ``latents`` (.pt / .pth (loaded with ``weights_only=True``), .npy (no pickle), .safetensors):
  either a mapping ``name -> [num_ws, w_dim]`` (name = relative path, file name, or file stem), or
  one array ``[N, num_ws, w_dim]`` aligned with the sorted file list (``N`` must equal its length;
  a .safetensors / .pt dict with a single 3-D entry counts as such an array).
* ``captions``: .json ``{name: caption | [captions]}``, or .txt with one ``name<TAB>caption``
  per line (repeated names add captions), or a folder with ``<relative path minus extension>.txt``
  files holding one caption per line (MM-CelebA-HQ style).
* ``train_list`` / ``val_list`` / ``test_list``: .txt files, one name per line (``#`` comments and
  blank lines ignored).

Names in latents, captions and split lists resolve through :class:`NameMatcher`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np
import torch

from src.data.images import is_image_file
from src.utils.errors import UserError

LATENT_EXTENSIONS = (".pt", ".pth", ".npy", ".safetensors")


# ----------------------------------------------------------------------------------- file lists
def list_images(root: str | os.PathLike) -> list[str]:
    """Sorted relative POSIX paths of the image files under ``root`` (recursive, no hidden entries)."""
    r = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                out.append(Path(dirpath, name).relative_to(r).as_posix())
    return sorted(out)


def _norm_name(name: str) -> str:
    n = str(name).strip().replace("\\", "/")
    while n.startswith("./"):
        n = n[2:]
    return n


class NameMatcher:
    """Resolves user-given names to relative paths: exact relative path, else a file name or a
    file stem that is unique under the root."""

    def __init__(self, files: Sequence[str]):
        self.exact = {f: f for f in files}
        self.by_name: dict[str, Optional[str]] = {}
        self.by_stem: dict[str, Optional[str]] = {}
        for f in files:
            p = PurePosixPath(f)
            for table, key in ((self.by_name, p.name), (self.by_stem, p.stem)):
                table[key] = None if key in table else f  # None marks an ambiguous key

    def __call__(self, name: str) -> Optional[str]:
        n = _norm_name(name)
        if n in self.exact:
            return n
        p = PurePosixPath(n)
        for table, key in ((self.by_name, p.name), (self.by_stem, p.stem), (self.by_stem, p.name)):
            hit = table.get(key)
            if hit is not None:
                return hit
        return None


def read_list_file(path: str | os.PathLike) -> list[str]:
    """Names from a split list: one per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: split list file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read split list ({e})") from None
    return [_norm_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ----------------------------------------------------------------------------------- latents
def _as_float_tensor(x: Any, where: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"{where}: latents must be floating point, got {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{where}: expected a tensor/array of latents, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UserError(f"{where}: latents must be floating point, got {x.dtype}")
    x = x.detach().to(torch.float32).cpu()
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: latents contain NaN or Inf")
    return x


def read_latents_file(path: str | os.PathLike) -> torch.Tensor | dict[str, torch.Tensor]:
    """Read a latents file: one float32 tensor [N, num_ws, w_dim], or a dict name -> [num_ws, w_dim]."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: latents file not found")
    ext = p.suffix.lower()
    try:
        if ext in (".pt", ".pth"):
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # the weights-only unpickler refuses anything but tensors/containers
                raise UserError(f"{p}: not a weights-only torch file of latents ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        elif ext == ".npy":
            from src.utils.npy import load_npy

            obj = load_npy(p)
        elif ext == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(p), device="cpu")
        else:
            raise UserError(f"{p}: unsupported latents format '{p.suffix}' (use {', '.join(LATENT_EXTENSIONS)})")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{p}: cannot read latents ({type(e).__name__}: {e})") from None

    if isinstance(obj, dict):
        if len(obj) == 1:
            (only,) = obj.values()
            if isinstance(only, (torch.Tensor, np.ndarray)) and only.ndim == 3:
                obj = only  # {"latents": [N, L, C]}: an aligned array under a single key
        if isinstance(obj, dict):
            out = {}
            shape = None
            for k, v in obj.items():
                t = _as_float_tensor(v, f"{p} [{k}]")
                if t.dim() == 3 and t.shape[0] == 1:
                    t = t[0]
                if t.dim() != 2:
                    raise UserError(f"{p}: latent '{k}' has shape {list(t.shape)}, expected [num_ws, w_dim]")
                if shape is not None and t.shape != shape:
                    raise UserError(f"{p}: latent '{k}' has shape {list(t.shape)}, others {list(shape)}")
                shape = t.shape
                out[str(k)] = t
            if not out:
                raise UserError(f"{p}: the latents file is empty")
            return out
    t = _as_float_tensor(obj, str(p))
    if t.dim() != 3:
        raise UserError(f"{p}: latents array has shape {list(t.shape)}, expected [N, num_ws, w_dim]")
    return t


def match_latents(data: torch.Tensor | dict[str, torch.Tensor], files: Sequence[str], where: str
                  ) -> tuple[Optional[torch.Tensor], list[bool]]:
    """Latents aligned with ``files``: (tensor [len(files), num_ws, w_dim] with zeros where missing,
    has[i]). An array must have exactly one code per file of the sorted list."""
    if isinstance(data, torch.Tensor):
        if data.shape[0] != len(files):
            raise UserError(f"{where}: the latents array has {data.shape[0]} codes but {len(files)} images were "
                            "found; an array must be aligned with the sorted list of images under root "
                            "(or use a dict keyed by file name)")
        return data, [True] * len(files)
    matcher = NameMatcher(files)
    shape = next(iter(data.values())).shape
    out = torch.zeros(len(files), *shape)
    has = [False] * len(files)
    index = {f: i for i, f in enumerate(files)}
    for k, v in data.items():
        f = matcher(k)
        if f is not None:
            out[index[f]] = v
            has[index[f]] = True
    if not any(has):
        raise UserError(f"{where}: none of the {len(data)} latent names match an image under root "
                        f"(e.g. '{next(iter(data))}' vs '{files[0]}')")
    return out, has


# ----------------------------------------------------------------------------------- captions
def read_captions(path: str | os.PathLike, files: Sequence[str]) -> list[list[str]]:
    """Captions per file of ``files`` (empty list where none). Formats in the module docstring."""
    p = Path(path)
    matcher = NameMatcher(files)
    index = {f: i for i, f in enumerate(files)}
    out: list[list[str]] = [[] for _ in files]
    if p.is_dir():
        for i, f in enumerate(files):
            txt = p / PurePosixPath(f).with_suffix(".txt")
            if txt.is_file():
                try:
                    out[i] = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
                except (OSError, UnicodeDecodeError) as e:
                    raise UserError(f"{txt}: cannot read captions ({e})") from None
        return out
    if not p.is_file():
        raise UserError(f"{p}: captions file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read captions ({e})") from None
    pairs: list[tuple[str, str]] = []
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{p}: expected a JSON object {{file name: caption or [captions]}}")
        for k, v in obj.items():
            caps = [v] if isinstance(v, str) else v
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise UserError(f"{p}: captions of '{k}' must be a string or a list of strings")
            pairs.extend((k, c) for c in caps)
    elif p.suffix.lower() == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise UserError(f"{p}:{n}: expected 'file name<TAB>caption'")
            k, c = line.split("\t", 1)
            pairs.append((k, c))
    else:
        raise UserError(f"{p}: captions must be a .json file, a .txt file or a folder of .txt files")
    for k, c in pairs:
        f = matcher(k)
        if f is not None and c.strip():
            out[index[f]].append(c.strip())
    return out
