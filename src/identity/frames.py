"""Checks and resizing of the frames that identity networks read ([N, 3, H, W] in [-1, 1])."""
from __future__ import annotations

import torch

from src.ops.resize import resize
from src.utils.errors import UserError


def check_frames(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise UserError(f"identity embedder expects frames [N,3,H,W] in [-1,1], got {shape}")
    return frames


def resize_square(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,H,W] -> [N,3,size,size] (antialiased when shrinking)."""
    if frames.shape[-2:] == (size, size):
        return frames
    shrink = min(frames.shape[-2:]) > size
    return resize(frames.float(), (size, size), mode="bilinear", antialias=shrink)
