"""GAN losses and regularisers of StyleGAN2(-ADA), written from the papers' equations.

* Non-saturating logistic loss (Goodfellow et al. 2014):
  D: softplus(D(fake)) + softplus(-D(real));  G: softplus(-D(fake)).
* R1 (Mescheder et al. 2018): gamma/2 * ||dD(x)/dx||^2 on reals, applied lazily every
  ``interval`` D steps and scaled by ``interval`` (StyleGAN2 "lazy regularisation").
* Path-length regularisation (StyleGAN2): E[(||J_w^T y||_2 - a)^2], y ~ N(0, I)/sqrt(H*W),
  ``a`` an exponential moving average of the lengths.
* EMA generator with a half-life given in thousands of images and a ramp-up
  (StyleGAN2-ADA, appendix: beta = 0.5 ** (batch / ema_nimg), ema_nimg <= cur_nimg * rampup).

Nothing here reads a value back to the host: every statistic stays a device tensor so the
training step never synchronises with the GPU.
"""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "d_logistic_loss",
    "g_nonsaturating_loss",
    "r1_penalty",
    "PathLengthPenalty",
    "ema_beta",
    "update_ema",
    "lazy_optimizer_params",
]


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator logistic loss. real_logits, fake_logits: [N, 1] (or [N]) -> scalar."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator non-saturating loss -log(sigmoid(D(G(z)))). fake_logits: [N, 1] -> scalar."""
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_img: Tensor, real_logits: Tensor) -> Tensor:
    """Squared gradient norm of D at the reals, per sample.

    real_img: [N, C, H, W] with requires_grad=True, the tensor that produced real_logits [N, 1].
    Returns [N] (multiply by gamma/2 and the lazy interval outside). The graph is kept
    (create_graph=True) so the penalty itself can be back-propagated into D.
    """
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real_img, create_graph=True)
    return grad.float().square().flatten(1).sum(1)


class PathLengthPenalty(nn.Module):
    """Path-length regulariser with its running mean ``pl_mean`` (a buffer, checkpointed).

    forward(img [N, C, H, W], ws [N, L, w_dim]) -> penalty [N]; ``img`` must have been made
    from ``ws`` with a graph. Also updates ``pl_mean`` in place (lerp toward the batch mean
    with ``decay``) without leaving the device.
    """

    def __init__(self, decay: float = 0.01):
        super().__init__()
        self.decay = float(decay)
        self.register_buffer("pl_mean", torch.zeros([]))

    def forward(self, img: Tensor, ws: Tensor) -> Tensor:
        h, w = img.shape[2], img.shape[3]
        # Noise scaled by 1/sqrt(H*W) makes the expected length independent of resolution.
        noise = torch.randn_like(img) / math.sqrt(h * w)
        (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
        lengths = grad.float().square().sum(2).mean(1).sqrt()  # [N]
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(lengths.mean().detach(), self.decay))
        return (lengths - self.pl_mean).square()


def ema_beta(batch_size: int, ema_kimg: float, ema_rampup: Optional[float], cur_nimg: int) -> float:
    """EMA decay per step for a half-life of ``ema_kimg`` thousand images.

    With ramp-up the half-life is at most ``cur_nimg * ema_rampup`` images, so early on G_ema
    follows G closely. Plain Python floats: no device round trip.
    """
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None and ema_rampup > 0:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, src: nn.Module, beta: float) -> None:
    """ema_param <- lerp(src_param, ema_param, beta) for every parameter; buffers copied.

    Uses one foreach kernel group for the parameters (hundreds of small tensors).
    """
    e_params = [p for p in ema.parameters()]
    s_params = [p.detach() for p in src.parameters()]
    if len(e_params) != len(s_params):
        raise ValueError("update_ema: the two networks have different parameter lists")
    if e_params:
        torch._foreach_lerp_(e_params, s_params, 1.0 - beta)
    for b_ema, b_src in zip(ema.buffers(), src.buffers()):
        b_ema.copy_(b_src)


def lazy_optimizer_params(lr: float, betas: Iterable[float], reg_interval: Optional[int]) -> tuple:
    """Adjust Adam's lr and betas for lazy regularisation (StyleGAN2, appendix B).

    The regularised optimiser sees interval/(interval+1) of the usual number of "minibatches"
    per step, so lr and betas are rescaled to keep the effective schedule.
    Returns (lr, (beta1, beta2)).
    """
    b1, b2 = tuple(betas)
    if not reg_interval:
        return lr, (b1, b2)
    ratio = reg_interval / (reg_interval + 1)
    return lr * ratio, (b1 ** ratio, b2 ** ratio)
