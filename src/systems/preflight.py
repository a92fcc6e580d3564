"""What a training run needs on disk, checked before anything is built or written.

A run that lacks a generator, its input latents or photos, or a CLIP weights file stops at once with one
line naming every missing file, the config key that names it and where to get it, instead of failing
minutes later on the first one (or leaving a half-made run folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from src.utils.config import get_dotted, plain

_WHERE = {
    "domain.generator.checkpoint": "the pretrained generator: docs/real_domains.md says where each domain's "
                                   "file is published; put it there or set the key",
    "domain.data.latents": "the input faces: e4e W+ codes named by photo, see docs/real_domains.md",
    "data.photos": "the folder of photos the latents were inverted from (data.clip_image=photo)",
    "clip": "CLIP weights file",
}


def _file(value: Any) -> Path | None:
    return Path(str(value)).expanduser() if value not in (None, "", "???") else None


def missing_inputs(cfg: Any) -> list[str]:
    """'key=path (what it is)' for every input file or folder of an animator run that is not there."""
    cfg = plain(cfg)
    if get_dotted(cfg, "task.name") != "animator":
        return []
    missing: list[str] = []

    def need(key: str, path: Path | None, folder: bool = False, what: str | None = None) -> None:
        if path is not None and not (path.is_dir() if folder else path.exists()):
            missing.append(f"{key}={path} ({what or _WHERE[key]})")

    need("domain.generator.checkpoint", _file(get_dotted(cfg, "domain.generator.checkpoint")))
    for tower in ("clip", "loss_clip"):
        if get_dotted(cfg, f"domain.{tower}.kind") == "open_clip":
            for key in ("checkpoint", "pretrained"):
                value = get_dotted(cfg, f"domain.{tower}.{key}")
                if key == "checkpoint" or _looks_like_path(value):
                    need(f"domain.{tower}.{key}", _file(value), what=_WHERE["clip"])
    latents = _file(get_dotted(cfg, "data.latents"))
    need("domain.data.latents", latents)
    if get_dotted(cfg, "data.clip_image") == "photo":
        if latents is None:
            missing.append(f"domain.data.latents=null ({_WHERE['domain.data.latents']}; data.clip_image=photo pairs "
                           "each photo with its code)")
        need("data.photos", _file(get_dotted(cfg, "data.photos")), folder=True)
    # the LPIPS weights are not checked: a run fetches them on first use (src/networks/lpips_weights.py)
    return missing


def _looks_like_path(value: Any) -> bool:
    from src.networks.clip_encoder import looks_like_path

    return isinstance(value, str) and looks_like_path(value)


def missing_inputs_message(cfg: Any) -> str | None:
    """The one line that names every missing input, or None when all are there."""
    missing = missing_inputs(cfg)
    if not missing:
        return None
    name = get_dotted(plain(cfg), "name")
    run = f"the run '{name}'" if name else "this run"
    many = len(missing) > 1
    return (f"{run} needs {len(missing)} input{'s' if many else ''} that {'are' if many else 'is'} not there: "
            + "; ".join(missing))
