"""ArcFace (IR-SE50) on face frames, with the crop pSp/e4e use for FFHQ-aligned images.

:func:`arcface_input` is the one definition of that crop; :class:`ArcFaceIdentity` is the
differentiable network of the identity loss, :class:`ArcFaceEmbedder` the batched, gradient-free
metric embedder (frames [N,3,H,W] in [-1,1] -> [N,512], unit norm).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from src.identity.frames import check_frames, resize_square
from src.identity.irse50 import load_irse50
from src.ops.resize import resize
from src.utils.errors import UserError

CROPS = ("ffhq", "none")


def arcface_input(frames: torch.Tensor, crop: str = "ffhq") -> torch.Tensor:
    """[N,3,H,W] in [-1,1] -> [N,3,112,112] network input. crop 'ffhq' takes the inner face of an
    FFHQ-aligned frame (resize to 256, rows 35:223, columns 32:220), 'none' the whole frame; then
    112 x 112 by area averaging (adaptive average pooling, deterministic on CUDA)."""
    x = frames.float().clamp(-1, 1)
    if crop == "ffhq":
        x = resize_square(x, 256)[:, :, 35:223, 32:220]
    return resize(x, (112, 112), mode="area")


def _check_crop(crop: str) -> str:
    if crop not in CROPS:
        raise UserError(f"arcface crop must be 'ffhq' or 'none', got {crop!r}")
    return crop


class ArcFaceIdentity(nn.Module):
    """Differentiable IR-SE50 embedder (the identity loss): img [N, 3, H, W] in [-1, 1] -> [N, 512]."""

    def __init__(self, net: nn.Module, crop: str = "ffhq"):
        super().__init__()
        self.net, self.crop = net, _check_crop(crop)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"arcface input must be [N, 3, H, W], got {tuple(img.shape)}")
        return self.net(arcface_input(img, self.crop))


class ArcFaceEmbedder:
    """IR-SE50 embeddings of frames for the metrics, without gradients, ``batch_size`` at a time.

    Args:
        path: ``model_ir_se50.pth`` (default: ``checkpoints/`` of the working dir, then of the repo).
        device: where the network runs.
        crop: 'ffhq' or 'none' (see :func:`arcface_input`).
        batch_size: frames per forward pass.
    """

    def __init__(self, path: Optional[str | Path] = None, device: str | torch.device = "cpu",
                 crop: str = "ffhq", batch_size: int = 64, net: Optional[nn.Module] = None):
        _check_crop(crop)
        self.net = net.eval().to(device) if net is not None else load_irse50(path, device)
        self.device = torch.device(device)
        self.crop = crop
        self.batch_size = int(batch_size)
        self.dim = 512

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        return arcface_input(frames, self.crop)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = check_frames(frames)
        out = [self.net(self.preprocess(chunk.to(self.device))) for chunk in frames.split(self.batch_size)]
        return torch.cat(out).float().to(frames.device)
