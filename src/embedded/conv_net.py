"""The small CNN the embedded domain's readers share: the attribute oracle, the identity reader and
the face recogniser are each one of these with their own head size and training."""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from src.ops.resize import resize
from src.utils.errors import UserError


def _block(cin: int, cout: int) -> nn.Sequential:
    """Stride-2 downsampling block: conv3x3/2 - BN - SiLU - conv3x3 - BN - SiLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(inplace=True),
    )


def conv_trunk_and_head(resolution: int, width: int, hidden: int, outputs: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(features, head): stride-2 blocks from ``resolution`` down to 4x4 (channels ``width``, doubling
    per stage, capped at 8x), then Flatten - Linear(hidden) - SiLU - Linear(outputs). The 4x4 map is
    flattened rather than pooled: positions matter (gaze, yaw, which eye, eye spacing)."""
    n_down = int(math.log2(resolution)) - 2
    layers, cin = [], 3
    for c in [min(width * 2 ** i, width * 8) for i in range(n_down)]:
        layers.append(_block(cin, c))
        cin = c
    head = nn.Sequential(nn.Flatten(), nn.Linear(cin * 16, hidden), nn.SiLU(inplace=True), nn.Linear(hidden, outputs))
    return nn.Sequential(*layers), head


class SmallConvNet(nn.Module):
    """Stride-2 conv trunk to 4x4 and an MLP head (``conv_trunk_and_head``), run at ``resolution``.

    resolution: the size the network runs at (a power of two >= 16; other image sizes are resized);
    width: channels of the first stage; hidden: MLP width; outputs: size of the head's output;
    what: the network's name in errors. ``trunk_and_head(img [N,3,H,W] in [-1,1])`` -> [N, outputs].
    """

    def __init__(self, resolution: int, width: int, hidden: int, outputs: int, what: str):
        super().__init__()
        if resolution < 16 or resolution & (resolution - 1):
            raise UserError(f"{what} resolution must be a power of two >= 16, got {resolution}")
        self.resolution, self.what = resolution, what
        self.features, self.head = conv_trunk_and_head(resolution, width, hidden, outputs)

    def trunk_and_head(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"{self.what} input must be [N, 3, H, W], got {tuple(img.shape)}")
        if img.shape[-2:] != (self.resolution, self.resolution):
            img = resize(img, (self.resolution, self.resolution), mode="bilinear", antialias=True)
        return self.head(self.features(img))
