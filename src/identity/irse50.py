"""IR-SE50, the ArcFace network of the paper's identity loss and ACD, and its loader.

Weights are NOT shipped: give the file ``model_ir_se50.pth`` (the IR-SE50 weights that pSp / e4e
publish for their identity loss). Loading reads a state dict only (``weights_only=True``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.utils.errors import UserError

ARCFACE_FILE = "model_ir_se50.pth"


class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(W2 relu(W1 avgpool(x))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a mean, not AdaptiveAvgPool2d(1): the same value, and its CUDA backward is deterministic
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with SE: BN-conv3x3-PReLU-conv3x3(stride)-BN-SE plus a shortcut
    (identity via a 1x1 max-pool with the stride when channels match, else conv1x1+BN)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50 backbone: [N,3,112,112] in [-1,1] -> [N,512] unit-norm embeddings.

    Four stages of (3, 4, 14, 3) units with depths 64, 128, 256, 512; each stage's first unit
    has stride 2 (112 -> 7). Parameter names follow the published ``model_ir_se50.pth``.
    """

    STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))

    def __init__(self, drop_ratio: float = 0.4):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in self.STAGES:
            units.append(BottleneckIRSE(cin, depth, 2))
            units.extend(BottleneckIRSE(depth, depth, 1) for _ in range(n - 1))
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (112, 112):
            raise ValueError(f"IRSE50 expects 112x112 inputs, got {tuple(x.shape[-2:])}")
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def _default_arcface_paths() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [Path.cwd() / "checkpoints" / ARCFACE_FILE, repo / "checkpoints" / ARCFACE_FILE]


def load_irse50(path: Optional[str | Path] = None, device: str | torch.device = "cpu") -> IRSE50:
    """Build IR-SE50 and load ``model_ir_se50.pth`` (weights_only). UserError when the file is
    missing, unreadable, or its keys/shapes do not match the architecture."""
    candidates = [Path(path)] if path is not None else _default_arcface_paths()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        raise UserError(f"ArcFace weights not found ({where}): download the IR-SE50 file {ARCFACE_FILE} "
                        "(published with pSp/e4e) and pass its path, or use identity_metric=dlib")
    try:
        state = torch.load(found, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{found}: cannot read ArcFace weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{found}: expected a state dict of tensors for IR-SE50")
    # DataParallel checkpoints prefix every name with "module."
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    net = IRSE50()
    own = net.state_dict()
    # older checkpoints predate BatchNorm's num_batches_tracked counter: not a mismatch
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {list(state[k].shape)} vs {list(own[k].shape)})")
        raise UserError(f"{found}: not IR-SE50 ArcFace weights: keys " + "; ".join(parts))
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False).to(device)
