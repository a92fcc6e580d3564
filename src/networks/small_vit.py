"""The small CLIP's ViT image tower: the architecture of open_clip's ``VisionTransformer`` with its
default options (class-token pooling, LayerNorm before and after the blocks, GELU MLPs, no layer
scale), with the same parameter names, so files written with either load into the other
(tests/test_small_clip.py checks both give the same features). Its own module so that animating
with the embedded default does not import open_clip (whose package import pulls in timm and
transformers: about 2 s and a few hundred MB on a CPU).

Shapes: image [N, 3, S, S] -> [N, output_dim]; tokens [N, 1 + (S / patch)^2, width].
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _LayerNorm(nn.LayerNorm):
    """LayerNorm that returns the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class _Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then + mlp(ln_2(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = _LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = _LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: Tensor) -> Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Blocks(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList([_Block(width, heads, mlp_ratio) for _ in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class SmallViT(nn.Module):
    """ViT image tower: patches -> class token + positions -> blocks -> LayerNorm -> class token @ proj."""

    def __init__(self, image_size: int, patch_size: int, width: int, layers: int, heads: int,
                 mlp_ratio: float, output_dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size, self.output_dim = image_size, patch_size, output_dim
        grid = image_size // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = _LayerNorm(width)
        self.transformer = _Blocks(width, layers, heads, mlp_ratio)
        self.ln_post = _LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        assert x.ndim == 4 and x.shape[1] == 3 and x.shape[-1] == x.shape[-2] == self.image_size, tuple(x.shape)
        x = self.conv1(x).flatten(2).transpose(1, 2)                              # [N, grid^2, width]
        cls = self.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)[:, 0] @ self.proj
