"""The one reader and writer of trained-animator files.

An animator file holds the trainable weights (the recurrent animator and its mappers, plus the
CLIP text tower when it was fine-tuned), the configuration it was trained with (``hyper_parameters``:
the domain naming the generator, CLIP and prompts, the architecture and the inference defaults) and
the sha256 of the frozen weights. Two containers carry it, and both load without executing code:

* an export: ``.safetensors`` whose metadata header holds ``format``, ``hyper_parameters`` and
  ``frozen_hashes`` as JSON (what ``FaceAnimator.save_pretrained`` and training write);
* a Lightning checkpoint of a training run (``.ckpt``, read with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from src.utils.config import get_dotted, plain, set_dotted
from src.utils.errors import UserError
from src.utils.io import atomic_write

FORMAT = "lgfa-animator-1"
# config entries that name files; in an export, relative paths are relative to the file's folder
FILE_KEYS = ("domain.generator.checkpoint", "domain.clip.checkpoint", "domain.loss_clip.checkpoint",
             "domain.clip.pretrained", "domain.loss_clip.pretrained", "domain.identity_loss.checkpoint",
             "validation.identity_metric_path", "inference.projection_reader", "train.init_checkpoint")
# files written before the settings were grouped keep them at the top level: where each one lives now
_GROUPED = {**{k: f"net.{k}" for k in ("hidden", "variant", "mapper_hidden", "mapper_last_activation", "mapper_lr_mul",
                                       "h0_eval", "image_offset_schedule", "use_image_mapper", "offset_space",
                                       "offset_layers")},
            "train_frames": "train.frames", "val_frames": "inference.frames", "val_decay": "inference.decay",
            "motion_total": "inference.motion_total", "identity_projection": "inference.identity_projection",
            "projection_reader": "inference.projection_reader",
            **{k: f"train.{k}" for k in ("lr", "text_lr", "betas", "clip_loss", "cosine_fallback_weight", "clip_views",
                                         "clip_view_noise", "lpips_size", "lpips_path", "init_checkpoint")},
            **{k: f"validation.{k}" for k in ("identity_metric_path", "video_every_n_steps", "video_fps",
                                              "num_videos")}}
_DROPPED = ("inference_only",)  # a flag of the loader that wrote some of them, not a setting


def grouped(hyper_parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration with its settings in their groups (net, train, inference, validation), also
    when it comes from a file that kept them at the top level."""
    hp = {k: v for k, v in plain(dict(hyper_parameters)).items() if k not in _DROPPED}
    for key, dotted in _GROUPED.items():
        if key in hp and not isinstance(hp[key], dict):
            set_dotted(hp, dotted, hp.pop(key))
    train = hp.get("train")
    if isinstance(train, dict) and "clip_finetune" not in train:  # written before the option: CLIP frozen
        train["clip_finetune"] = "text" if float(train.get("text_lr") or 0.0) > 0 else "none"
    return hp


@dataclass
class AnimatorFile:
    """What an animator file holds: its config, trainable weights and the frozen weights' hashes."""

    hyper_parameters: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    frozen_hashes: dict[str, dict[str, str]]


def _read_checkpoint(path: Path) -> AnimatorFile:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle globals, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable checkpoint ({first})") from None
    if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise UserError(f"{path}: not an animator checkpoint (no hyper_parameters/state_dict)")
    return AnimatorFile(grouped(ckpt["hyper_parameters"]), ckpt["state_dict"], ckpt.get("frozen_hashes") or {})


def _read_export(path: Path) -> AnimatorFile:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if meta.get("format") != FORMAT:
        raise UserError(f"{path}: not an exported animator (metadata format {meta.get('format')!r}, "
                        f"expected {FORMAT!r})")
    try:
        hp, hashes = grouped(json.loads(meta["hyper_parameters"])), json.loads(meta.get("frozen_hashes", "{}"))
    except (KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable animator metadata ({e})") from None
    for key in FILE_KEYS:  # relative file names are relative to the export's folder
        value = get_dotted(hp, key)
        if isinstance(value, str) and value and not Path(value).is_absolute() and (path.parent / value).exists():
            set_dotted(hp, key, str(path.parent / value))
    return AnimatorFile(hp, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, hashes)


def read_animator_file(path: str | Path) -> AnimatorFile:
    """Read an export (.safetensors) or a Lightning checkpoint (.ckpt, or any zip) of an animator."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"animator checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    return _read_checkpoint(path) if head[:2] == b"PK" or path.suffix == ".ckpt" else _read_export(path)


def write_animator_file(path: str | Path, hyper_parameters: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor],
                        frozen_hashes: Mapping[str, Any], relative_to: Optional[str | Path] = None,
                        fp16: bool = False) -> Path:
    """Write an export atomically. With ``relative_to``, file names in the config under that folder
    are stored relative to it (so an assets/ folder can move); ``fp16`` halves the floating weights."""
    from safetensors.torch import save_file

    hp = plain(dict(hyper_parameters))
    if relative_to is not None:
        base = Path(relative_to).resolve()
        for key in FILE_KEYS:
            value = get_dotted(hp, key)
            if isinstance(value, str) and value and Path(value).resolve().is_relative_to(base):
                set_dotted(hp, key, str(Path(value).resolve().relative_to(base)))
    state = {k: (v.half() if fp16 and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in state_dict.items()}
    meta = {"format": FORMAT, "hyper_parameters": json.dumps(hp), "frozen_hashes": json.dumps(dict(frozen_hashes))}
    with atomic_write(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)
