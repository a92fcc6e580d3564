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
import torch.nn.functional as F

from src.embedded.conv_net import SmallConvNet
from src.networks.weights_file import build_checked, load_net_state, read_net_files, save_net
from src.utils.errors import UserError


class SyntheticFaceID(SmallConvNet):
    """CNN face embedder: img [N, 3, H, W] in [-1, 1] -> [N, embed_dim], unit L2 norm.

    resolution: size the network runs at (power of two >= 16; other sizes are resized); width:
    channels of the first stage (doubling per stage, capped at 8x); hidden: MLP width of the head.
    The 4x4 feature map is flattened (not pooled) so that where a part sits (eye spacing) is kept.
    """

    def __init__(self, resolution: int = 128, width: int = 24, hidden: int = 256, embed_dim: int = 128):
        if embed_dim < 2 or width < 1 or hidden < 1:
            raise UserError(f"face-id embed_dim must be >= 2 and width, hidden >= 1, got {embed_dim}, {width}, {hidden}")
        super().__init__(resolution, width, hidden, embed_dim, "face-id")
        self.init_kwargs = {"resolution": resolution, "width": width, "hidden": hidden, "embed_dim": embed_dim}
        self.embed_dim = embed_dim

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.trunk_and_head(img).float(), dim=1)


def save_face_id(net: SyntheticFaceID, path: str | Path, extra: Optional[dict] = None) -> Path:
    """Write <path>.safetensors (fp16 weights) + <path>.json atomically; returns the weights path."""
    meta = {"class": "SyntheticFaceID", "init_kwargs": net.init_kwargs, **(extra or {})}
    return save_net(net, path, meta, dtype=torch.float16)


def load_face_id(path: str | Path, device: str | torch.device = "cpu") -> SyntheticFaceID:
    """Load a network written by save_face_id (path with or without suffix), frozen, in eval mode."""
    meta, weights = read_net_files(path, "face-id")
    if meta.get("class") != "SyntheticFaceID":
        raise UserError(f"{weights.with_suffix('.json')} describes a {meta.get('class')!r}, not a SyntheticFaceID")
    net = build_checked(lambda: SyntheticFaceID(**meta["init_kwargs"]), weights, "face-id")
    return load_net_state(net, weights).to(device).eval().requires_grad_(False)
