"""The frozen parts an animator is built on, from a domain config: the generator and the CLIP
encoders, frozen in eval mode, and the sha256 records that pin them in every saved animator
(a checkpoint stores the hashes, never the frozen weights)."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from src.networks.clip_encoder import ClipEncoder
from src.utils.config import get_dotted, plain
from src.utils.errors import UserError
from src.utils.io import sha256_files

HASH_CHECKS = ("error", "warn", "off")


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def sidecars(path: str) -> list[str]:
    """The JSON sidecar of a .safetensors weights file, when present (it holds the architecture)."""
    p = Path(path)
    side = p.with_suffix(".json")
    return [str(side)] if p.suffix == ".safetensors" and side.is_file() else []


def load_domain_generator(domain: Mapping) -> tuple[nn.Module, list[str]]:
    """(frozen generator, its files) of domain.generator.checkpoint."""
    from src.stylegan import load_generator

    ckpt = get_dotted(domain, "generator.checkpoint")
    if not ckpt:
        raise UserError("domain.generator.checkpoint is not set")
    return freeze(load_generator(ckpt)), [str(ckpt)] + sidecars(ckpt)


def build_clip(domain: Mapping, key: str, module: Optional[nn.Module] = None) -> ClipEncoder:
    """The frozen CLIP encoder of domain.<key> ('clip' or 'loss_clip'); ``module``: an in-code one."""
    if isinstance(module, ClipEncoder):
        return freeze(module)
    cfg = get_dotted(domain, key)
    if cfg is None:
        raise UserError(f"domain.{key} is not set")
    if module is None and cfg.get("kind") == "module":
        raise UserError(f"domain.{key}.kind is 'module': pass the CLIP module in code ({key}=...)")
    return freeze(ClipEncoder.from_config(cfg, module=module))


def same_clip(domain: Mapping) -> bool:
    """Whether domain.loss_clip names the same CLIP as domain.clip (one frozen copy then serves both)."""
    return plain(get_dotted(domain, "loss_clip")) == plain(get_dotted(domain, "clip"))


def prompt_list(domain: Mapping) -> list[str]:
    """The domain's prompts: template.format(concept) for every concept."""
    template = get_dotted(domain, "prompts.template", "{}")
    return [template.format(c) for c in (get_dotted(domain, "prompts.concepts", []) or [])]


def sha256_module(module: nn.Module) -> str:
    """sha256 over a module's state_dict (names, dtypes, shapes, values), for in-code modules."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def frozen_record(files: Sequence[str], module: nn.Module) -> dict[str, Any]:
    """{'source', 'sha256'} of a frozen part: over its files, or over its weights when built in code."""
    if files:
        return {"source": ", ".join(Path(f).name for f in files), "sha256": sha256_files(files)}
    return {"source": f"in-code {type(module).__name__}", "sha256": sha256_module(module)}


def compare_hashes(saved: Mapping[str, Mapping[str, str]], current: Mapping[str, Mapping[str, str]],
                   mode: str = "error") -> list[str]:
    """Names of the frozen parts whose saved hash differs from the loaded one; mode 'error' raises
    UserError, 'warn' warns, 'off' only returns them."""
    if mode not in HASH_CHECKS:
        raise UserError(f"hash_check '{mode}' is not error, warn or off")
    diffs = []
    for name, rec in saved.items():
        cur = current.get(name)
        if cur is None or cur["sha256"] == rec.get("sha256"):
            continue
        diffs.append(f"{name}: trained with {rec.get('source')} (sha256 {str(rec.get('sha256'))[:12]}), "
                     f"loaded {cur['source']} (sha256 {cur['sha256'][:12]})")
    if diffs and mode != "off":
        msg = ("frozen weights differ from those the checkpoint was trained with: " + "; ".join(diffs)
               + " (pass hash_check='warn' to load anyway)")
        if mode == "error":
            raise UserError(msg)
        warnings.warn(msg)
    return [d.split(":", 1)[0] for d in diffs]
