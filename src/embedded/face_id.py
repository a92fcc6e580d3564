"""The embedded domain's own face recogniser: a small CNN embedding renders so that the same identity
under any expression or pose lands close and faces that differ in one identity attribute (eye size,
mouth width, ...) land apart (trained by ``task=face_id``). It is trained apart from the attribute
oracle, which stays the independent judge of identity drift. Images [N, 3, H, W] in [-1, 1] map to
unit embeddings [N, D] compared by cosine (``domain.identity_loss.kind=synthetic``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.embedded.oracle import conv_trunk_and_head
from src.networks.weights_file import load_net_state, read_net_files, save_net
from src.ops.resize import resize
from src.utils.errors import UserError


class SyntheticFaceID(nn.Module):
    """CNN face embedder: img [N, 3, H, W] in [-1, 1] -> [N, embed_dim], unit L2 norm.

    resolution: size the network runs at (power of two >= 16; other sizes are resized); width:
    channels of the first stage (doubling per stage, capped at 8x); hidden: MLP width of the head.
    The 4x4 feature map is flattened (not pooled) so that where a part sits (eye spacing) is kept.
    """

    def __init__(self, resolution: int = 128, width: int = 24, hidden: int = 256, embed_dim: int = 128):
        super().__init__()
        if resolution < 16 or resolution & (resolution - 1):
            raise UserError(f"face-id resolution must be a power of two >= 16, got {resolution}")
        if embed_dim < 2 or width < 1 or hidden < 1:
            raise UserError(f"face-id embed_dim must be >= 2 and width, hidden >= 1, got {embed_dim}, {width}, {hidden}")
        self.init_kwargs = {"resolution": resolution, "width": width, "hidden": hidden, "embed_dim": embed_dim}
        self.resolution, self.embed_dim = resolution, embed_dim
        self.features, self.head = conv_trunk_and_head(resolution, width, hidden, embed_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"face-id input must be [N, 3, H, W], got {tuple(img.shape)}")
        if img.shape[-2:] != (self.resolution, self.resolution):
            img = resize(img, (self.resolution, self.resolution), mode="bilinear", antialias=True)
        return F.normalize(self.head(self.features(img)).float(), dim=1)


def save_face_id(net: SyntheticFaceID, path: str | Path, extra: Optional[dict] = None) -> Path:
    """Write <path>.safetensors (fp16 weights) + <path>.json atomically; returns the weights path."""
    meta = {"class": "SyntheticFaceID", "init_kwargs": net.init_kwargs, **(extra or {})}
    return save_net(net, path, meta, dtype=torch.float16)


def load_face_id(path: str | Path, device: str | torch.device = "cpu") -> SyntheticFaceID:
    """Load a network written by save_face_id (path with or without suffix), frozen, in eval mode."""
    meta, weights = read_net_files(path, "face-id")
    if meta.get("class") != "SyntheticFaceID":
        raise UserError(f"{weights.with_suffix('.json')} describes a {meta.get('class')!r}, not a SyntheticFaceID")
    try:
        net = SyntheticFaceID(**meta["init_kwargs"])
    except TypeError as e:
        raise UserError(f"{weights.with_suffix('.json')}: bad face-id arguments ({e})") from None
    return load_net_state(net, weights).to(device).eval().requires_grad_(False)
