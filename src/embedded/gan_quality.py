"""How well a generator of the embedded domain covers what the renderer draws, read by the attribute oracle.

Four measurements of G samples against renders (``bench/bench_gan_quality.py`` prints them):

- coverage: per oracle attribute, the 5-95 percentile range of the readings over G samples divided by
  the renders' range (:func:`coverage`); 1 when G spreads as far as the renderer, ~0 when it draws
  only one value of that attribute;
- the Frechet distance of the oracle's outputs (the attribute vectors, normalised to [0, 1]) and of its
  pooled conv-trunk features (texture and shape) (:func:`frechet_distance`: torchmetrics' Frechet
  distance, the one the GAN's validation uses, fed with features computed here);
- sharpness: the variance of the Laplacian of the luminance (:func:`laplacian_variance`), G / renders.

Sampling is deterministic: G at psi 1 with constant noise from seeded z, renders from seeded
parameters (:func:`generator_batches`, :func:`render_batches`); everything streams in batches so only
features are kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.embedded.params import PARAM_SPACE, sample_params
from src.embedded.render import render
from src.utils.errors import UserError

__all__ = ["FeatureSet", "away_share", "coverage", "frechet_distance", "laplacian_variance", "OracleReader",
           "generator_batches", "render_batches", "read_batches", "sample_generator"]

LOW_Q, HIGH_Q = 0.05, 0.95  # the percentiles whose range coverage compares
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


# --------------------------------------------------------------------------------------------
# the metrics: plain functions of feature tensors
# --------------------------------------------------------------------------------------------
def percentile_range(x: Tensor, low: float = LOW_Q, high: float = HIGH_Q) -> Tensor:
    """x [N, D] -> [2, D]: the ``low`` and ``high`` quantiles of each column."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise UserError(f"percentile ranges need [N >= 2, D] readings, got {tuple(x.shape)}")
    return torch.quantile(x.double(), torch.tensor([low, high], dtype=torch.float64), dim=0)


def coverage(gen: Tensor, ref: Tensor, low: float = LOW_Q, high: float = HIGH_Q) -> tuple[Tensor, Tensor, Tensor]:
    """Per column: (gen's [2, D] percentile range, ref's [2, D] range, width ratio gen / ref [D]).

    A column that does not vary in ``ref`` (range width 0) gets ratio NaN: nothing to cover."""
    if gen.dim() != 2 or ref.dim() != 2 or gen.shape[1] != ref.shape[1]:
        raise UserError(f"coverage compares [N, D] with [M, D] readings, got {tuple(gen.shape)} and {tuple(ref.shape)}")
    g, r = percentile_range(gen, low, high), percentile_range(ref, low, high)
    width_g, width_r = g[1] - g[0], r[1] - r[0]
    ratio = torch.where(width_r > 0, width_g / width_r.clamp_min(1e-300), torch.full_like(width_r, float("nan")))
    return g, r, ratio


def away_share(x: Tensor, neutral: Tensor, distance: float = 0.25) -> Tensor:
    """Per column of x [N, D] (normalised units): the share of rows farther than ``distance`` from
    ``neutral`` [D]; a generator that drops an attribute's rarer, moved mode scores far below the data."""
    return ((x.double() - neutral.double()).abs() > distance).double().mean(0)


class _GivenFeatures(nn.Module):
    """Identity 'feature network' of ``num_features`` columns: lets torchmetrics' Frechet distance
    take features computed elsewhere."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature sets a [N, D] and b [M, D] (float64):
    |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), by torchmetrics (as the GAN's validation)."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1] or min(a.shape[0], b.shape[0]) < 2:
        raise UserError(f"a Frechet distance needs two [N >= 2, D] feature sets, got {tuple(a.shape)} "
                        f"and {tuple(b.shape)}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    fd = FrechetInceptionDistance(feature=_GivenFeatures(a.shape[1]), normalize=True)
    fd.update(a.detach().double().cpu(), real=True)
    fd.update(b.detach().double().cpu(), real=False)
    return float(fd.compute())


def laplacian_variance(images: Tensor) -> Tensor:
    """Sharpness: images [N, 3, H, W] in [-1, 1] -> [N], the variance of the 3x3 Laplacian of each
    image's luminance (valid positions only; a blur lowers it, sharp edges and fine texture raise it)."""
    if images.dim() != 4 or images.shape[1] != 3 or min(images.shape[-2:]) < 3:
        raise UserError(f"laplacian_variance expects [N, 3, H >= 3, W >= 3] images, got {tuple(images.shape)}")
    x = images.float()
    luma = (x * _LUMA.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    lap = F.conv2d(luma, _LAPLACIAN.to(x.device).view(1, 1, 3, 3))
    return lap.flatten(1).var(dim=1)


# --------------------------------------------------------------------------------------------
# reading images: the oracle's outputs and its pooled trunk features in one pass
# --------------------------------------------------------------------------------------------
class OracleReader:
    """``reader(images)`` -> (oracle outputs [N, P] normalised, trunk features [N, C] mean-pooled over
    the trunk's last 4x4 map) of an AttributeOracle (``src.embedded.oracle.load_oracle``)."""

    def __init__(self, oracle: nn.Module):
        self.oracle = oracle.eval()
        self._pooled: Tensor | None = None
        oracle.features.register_forward_hook(self._keep)

    def _keep(self, module, inputs, output) -> None:
        self._pooled = output.float().mean(dim=(2, 3))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.oracle(images.float()).float()
        pooled, self._pooled = self._pooled, None
        return out, pooled


@dataclass
class FeatureSet:
    """What the metrics need of one set of images (all on the CPU): oracle outputs [N, P] (normalised),
    pooled trunk features [N, C], Laplacian variances [N]; ``keep`` first images [K, 3, H, W]; and, for
    G samples, the W latents [N, w_dim] (for renders, the true parameters [N, P], natural units)."""
    attributes: list[Tensor] = field(default_factory=list)
    trunk: list[Tensor] = field(default_factory=list)
    sharpness: list[Tensor] = field(default_factory=list)
    latents: list[Tensor] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)

    def cat(self, name: str) -> Tensor:
        return torch.cat(getattr(self, name))

    def __len__(self) -> int:
        return sum(len(a) for a in self.attributes)


def read_batches(batches: Iterator[tuple[Tensor, Tensor]], reader: OracleReader, keep: int = 0,
                 progress: Callable[[int], None] | None = None) -> FeatureSet:
    """Read every (images, latents) batch: oracle outputs, trunk features, sharpness; keep the first
    ``keep`` images. ``progress(done)`` is called after each batch."""
    fs = FeatureSet()
    for images, latents in batches:
        attributes, trunk = reader(images)
        fs.attributes.append(attributes.cpu())
        fs.trunk.append(trunk.cpu())
        fs.sharpness.append(laplacian_variance(images).cpu())
        fs.latents.append(latents.float().cpu())
        have = sum(len(x) for x in fs.images)
        if have < keep:
            fs.images.append(images[: keep - have].cpu())
        if progress is not None:
            progress(len(fs))
    return fs


# --------------------------------------------------------------------------------------------
# the two image sources, deterministic
# --------------------------------------------------------------------------------------------
def _chunks(n: int, batch: int) -> Iterator[int]:
    if n < 1 or batch < 1:
        raise UserError(f"need >= 1 image in batches of >= 1, got {n} in batches of {batch}")
    for start in range(0, n, batch):
        yield min(batch, n - start)


@torch.no_grad()
def sample_generator(G: nn.Module, w: Tensor) -> Tensor:
    """Images [N, 3, R, R] in [-1, 1] of W latents w [N, w_dim] (one w for every layer, constant noise)."""
    ws = w.to(next(G.parameters()).device).unsqueeze(1).repeat(1, G.num_ws, 1)
    return G.synthesis(ws, noise_mode="const").float().clamp(-1, 1)


@torch.no_grad()
def generator_batches(G: nn.Module, n: int, seed: int, batch: int = 64,
                      psi: float = 1.0) -> Iterator[tuple[Tensor, Tensor]]:
    """(images [B, 3, R, R] in [-1, 1], w [B, w_dim]) of ``n`` samples: z ~ N(0, I) from a CPU generator
    seeded ``seed`` (device independent), mapped at ``psi``, synthesised with constant noise."""
    device = next(G.parameters()).device
    g = torch.Generator().manual_seed(seed)
    for b in _chunks(n, batch):
        z = torch.randn(b, G.z_dim, generator=g).to(device)
        w = G.mapping(z, torch.zeros(b, G.c_dim, device=device), truncation_psi=psi)[:, 0]
        yield sample_generator(G, w), w


@torch.no_grad()
def render_batches(n: int, seed: int, resolution: int, device: str | torch.device = "cpu",
                   batch: int = 64) -> Iterator[tuple[Tensor, Tensor]]:
    """(images [B, 3, R, R] in [-1, 1], true parameters [B, P] natural units) of ``n`` renders drawn as
    the GAN's training stream draws them (``sample_params``, seeded ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    for b in _chunks(n, batch):
        params = sample_params(b, g)
        yield render(params.to(device), resolution).float(), params


def attribute_names() -> list[str]:
    """The oracle's outputs, in order (every renderer parameter)."""
    return list(PARAM_SPACE.names)


def _ridge(x: Tensor, y: Tensor, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    """(coefficients [D], x's mean, y's mean) of y [N] ~ x [N, D], the penalty ``ridge`` times the mean
    eigenvalue of the centred x'x (0: ordinary least squares)."""
    xm, ym = x.mean(0), y.mean()
    xc = x - xm
    gram = xc.T @ xc
    gram = gram + ridge * gram.trace() / gram.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.lstsq(gram, (xc.T @ (y - ym)).unsqueeze(1)).solution.squeeze(1), xm, ym


def regression_direction(x: Tensor, y: Tensor, ridge: float = 1.0) -> tuple[Tensor, float]:
    """The direction in x-space along which y changes most, linearly: ridge regression of y [N] on
    x [N, D] (``_ridge``; with few samples per dimension plain least squares fits noise). Returns
    (unit direction [D], held-out R^2: fitted on the even rows, scored on the odd ones)."""
    if x.dim() != 2 or y.shape != (x.shape[0],) or x.shape[0] < 4:
        raise UserError(f"regression_direction needs x [N >= 4, D] and y [N], got {tuple(x.shape)}, {tuple(y.shape)}")
    x, y = x.double(), y.double()
    coef, xm, ym = _ridge(x[0::2], y[0::2], ridge)
    test_x, test_y = x[1::2], y[1::2]
    residual = test_y - ((test_x - xm) @ coef + ym)
    r2 = 1.0 - float(residual.square().sum() / (test_y - test_y.mean()).square().sum().clamp_min(1e-30))
    coef = _ridge(x, y, ridge)[0]
    return coef / coef.norm().clamp_min(1e-30), r2
