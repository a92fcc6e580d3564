"""Our generator format: ``OUT.safetensors`` (every parameter and buffer by its state_dict name)
plus the sidecar ``OUT.json`` = {"format": "lgfa-stylegan2", "version": 1, "init_kwargs": {...},
"param_dtype": "float32"|"float16"}.

The architecture lives ONLY in the sidecar (the safetensors header carries just the format tag).
With ``fp16=True`` the float parameters are stored as fp16; buffers (w_avg, noise_const,
resample_filter) always stay fp32. Loading casts everything back to the model's fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Tuple

import torch

from src.stylegan.generator import Generator
from src.stylegan.nvidia_pickle import check_generator_kwargs, copy_tensors_into
from src.utils.errors import UserError
from src.utils.architecture import stored_shapes
from src.utils.io import atomic_write, atomic_write_text, check_input_file

FORMAT = "lgfa-stylegan2"
VERSION = 1


def paths_for(path) -> Tuple[Path, Path]:
    """'x' or 'x.safetensors' -> (x.safetensors, x.json)."""
    path = Path(path)
    base = path.with_suffix("") if path.suffix == ".safetensors" else path
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


def save_generator(G: Generator, path, fp16: bool = False) -> Path:
    """Write ``G`` atomically as path.safetensors + path.json; returns the safetensors path."""
    from safetensors.torch import save_file

    if not hasattr(G, "init_kwargs"):
        raise UserError("save_generator: the module has no init_kwargs (not a src.stylegan Generator)")
    st_path, json_path = paths_for(path)
    param_names = {name for name, _ in G.named_parameters()}
    tensors = {}
    for name, t in G.state_dict().items():
        t = t.detach().to("cpu")
        if fp16 and name in param_names and t.is_floating_point():
            t = t.to(torch.float16)
        tensors[name] = t.contiguous().clone()
    meta = {"format": FORMAT, "version": VERSION, "init_kwargs": G.init_kwargs,
            "param_dtype": "float16" if fp16 else "float32"}
    with atomic_write(st_path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "version": str(VERSION)})
    atomic_write_text(json_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return st_path


def read_sidecar(path) -> dict:
    """Validated sidecar JSON of a .safetensors generator."""
    st_path, json_path = paths_for(path)
    check_input_file(json_path, "generator sidecar")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{st_path}: missing architecture sidecar {json_path.name}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{json_path}: invalid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{json_path}: not an {FORMAT} sidecar (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise UserError(f"{json_path}: unsupported {FORMAT} version {meta.get('version')!r} (this code reads {VERSION})")
    if not isinstance(meta.get("init_kwargs"), dict):
        raise UserError(f"{json_path}: init_kwargs missing or not an object")
    return meta


def load_native(path, device="cpu") -> Generator:
    """OUT.safetensors (+ OUT.json) -> our Generator (eval mode, fp32) on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    st_path, json_path = paths_for(path)
    meta = read_sidecar(st_path)
    if not check_input_file(st_path, "generator").is_file():
        raise UserError(f"{st_path}: file not found")
    try:
        check_generator_kwargs(meta["init_kwargs"], stored_shapes(st_path), str(json_path))
        G = Generator(**meta["init_kwargs"])
    except TypeError as e:
        raise UserError(f"{st_path}: bad init_kwargs in the sidecar ({str(e).splitlines()[0]})") from None
    try:
        tensors = load_file(str(st_path))
    except FileNotFoundError:
        raise UserError(f"{st_path}: file not found") from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{st_path}: corrupt or truncated safetensors file ({msg})") from None
    copy_tensors_into(G, tensors, str(st_path))
    return G.eval().to(device)
