"""Differentiable GPU augmentation for discriminator training (the idea of StyleGAN2-ADA).

Every transform is applied to each image independently with probability ``p`` (a device
buffer, so changing it never needs a host sync). Geometric transforms are composed into one
2x3 sampling matrix per image and applied with one bilinear resampling (reflection
padding, which avoids the black borders that D could use to tell augmented images apart);
colour transforms are composed into one 3x4 affine colour matrix per image; cutout is a
multiplicative mask. All three stages are differentiable w.r.t. the input, including the
second derivative needed by R1 on augmented reals (the resampling is written with gathers:
torch's grid_sample has no double backward).

Transforms and their strengths (ADA's "bgc" defaults, adapted):
  xflip (x -> -x), integer translation (up to 0.125 of the size, rounded to whole pixels),
  isotropic scale (log2-normal, std 0.2), rotation (uniform in [-pi, pi]),
  brightness (+N(0, 0.2)), contrast (x log2-normal std 0.5), saturation (log2-normal std 1
  around the luma axis), cutout (a square of half the size set to 0).

``AdaptiveP`` holds the r_t = E[sign(D(real))] heuristic: accumulate signs on the device,
and every ``interval`` steps move p by sign(r_t - target) * batch*interval/(speed_kimg*1000).

``degrade`` is the blur / contrast / noise degradation of the render-trained readers (face
recogniser, identity-attribute reader), so that they also read the softer images of the generator.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.ops.resize import resize

__all__ = ["AugmentPipe", "AdaptiveP", "label_preserving_pipe", "augmented_views", "degrade"]


class AugmentPipe(nn.Module):
    """forward(images [N, C, H, W] in [-1, 1]) -> augmented images [N, C, H, W].

    ``p`` is a 0-dim float buffer; ``set_p`` writes it in place. Each transform can be
    disabled by its constructor flag. p == 0 returns the input values exactly (per image, a
    ``where`` keeps the original when no transform fired), so toggling ADA on does not change
    training before p rises.
    """

    def __init__(self, p: float = 0.0, xflip: bool = True, translate: bool = True, scale: bool = True,
                 rotate: bool = True, brightness: bool = True, contrast: bool = True,
                 saturation: bool = True, cutout: bool = True, translate_max: float = 0.125,
                 scale_std: float = 0.2, brightness_std: float = 0.2, contrast_std: float = 0.5,
                 saturation_std: float = 1.0, cutout_size: float = 0.5):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)))
        self.flags = dict(xflip=xflip, translate=translate, scale=scale, rotate=rotate,
                          brightness=brightness, contrast=contrast, saturation=saturation, cutout=cutout)
        self.translate_max = translate_max
        self.scale_std = scale_std
        self.brightness_std = brightness_std
        self.contrast_std = contrast_std
        self.saturation_std = saturation_std
        self.cutout_size = cutout_size

    @torch.no_grad()
    def set_p(self, value) -> None:
        """Set p (float or 0-dim tensor) in place, clamped to [0, 1]."""
        self.p.copy_(torch.as_tensor(value, dtype=self.p.dtype).clamp(0, 1))

    def _fire(self, n: int, device) -> Tensor:
        """[n] bool: which images get this transform (probability p each)."""
        return torch.rand(n, device=device) < self.p

    def forward(self, images: Tensor) -> Tensor:
        n, c, h, w = images.shape
        dev = images.device
        x = images
        f32 = dict(device=dev, dtype=torch.float32)
        eye = torch.eye(3, **f32).expand(n, 3, 3)

        # ---- geometric: a sampling matrix mapping output coords -> input coords ([-1, 1]) ----
        geom = eye
        geom_any = torch.zeros(n, dtype=torch.bool, device=dev)
        if self.flags["xflip"]:
            m = self._fire(n, dev)
            sx = torch.where(m, -1.0, 1.0).float()
            geom = geom @ _diag(sx, torch.ones_like(sx))
            geom_any |= m
        if self.flags["translate"]:
            m = self._fire(n, dev)
            # Whole pixels: t pixels = 2t/size in normalised coordinates.
            tx = torch.round((torch.rand(n, **f32) * 2 - 1) * self.translate_max * w) * (2.0 / w)
            ty = torch.round((torch.rand(n, **f32) * 2 - 1) * self.translate_max * h) * (2.0 / h)
            geom = geom @ _translate(tx * m, ty * m)
            geom_any |= m
        if self.flags["scale"]:
            m = self._fire(n, dev)
            s = torch.exp2(torch.randn(n, **f32) * self.scale_std * m)
            geom = geom @ _diag(s, s)
            geom_any |= m
        if self.flags["rotate"]:
            m = self._fire(n, dev)
            theta = (torch.rand(n, **f32) * 2 - 1) * math.pi * m
            geom = geom @ _rotate(theta)
            geom_any |= m
        if self.flags["xflip"] or self.flags["translate"] or self.flags["scale"] or self.flags["rotate"]:
            grid = F.affine_grid(geom[:, :2, :].to(x.dtype), [n, c, h, w], align_corners=False)
            warped = bilinear_sample_reflect(x, grid)
            x = torch.where(geom_any.view(n, 1, 1, 1), warped, x)

        # ---- colour: one affine 3x4 matrix per image (only for RGB) ----
        if c == 3:
            cmat = torch.eye(4, **f32).expand(n, 4, 4)
            col_any = torch.zeros(n, dtype=torch.bool, device=dev)
            if self.flags["brightness"]:
                m = self._fire(n, dev)
                b = torch.randn(n, **f32) * self.brightness_std * m
                t = torch.eye(4, **f32).repeat(n, 1, 1)
                t[:, :3, 3] = b[:, None]
                cmat = t @ cmat
                col_any |= m
            if self.flags["contrast"]:
                m = self._fire(n, dev)
                k = torch.exp2(torch.randn(n, **f32) * self.contrast_std * m)
                t = torch.diag_embed(torch.stack([k, k, k, torch.ones_like(k)], 1))
                cmat = t @ cmat
                col_any |= m
            if self.flags["saturation"]:
                m = self._fire(n, dev)
                s = torch.exp2(torch.randn(n, **f32) * self.saturation_std * m)
                # Luma axis built on the device (a host->device copy would block the host).
                vv = torch.full((3, 3), 1.0 / 3.0, **f32)  # outer product of (1,1,1)/sqrt(3)
                t = torch.eye(4, **f32).repeat(n, 1, 1)
                # Keep the luma component, scale the chroma plane by s.
                t[:, :3, :3] = vv + (torch.eye(3, **f32) - vv) * s[:, None, None]
                cmat = t @ cmat
                col_any |= m
            if self.flags["brightness"] or self.flags["contrast"] or self.flags["saturation"]:
                cm = cmat.to(x.dtype)
                y = torch.einsum("nij,njhw->nihw", cm[:, :3, :3], x) + cm[:, :3, 3, None, None]
                x = torch.where(col_any.view(n, 1, 1, 1), y, x)

        # ---- cutout ----
        if self.flags["cutout"]:
            m = self._fire(n, dev)
            cx = torch.rand(n, 1, 1, **f32)
            cy = torch.rand(n, 1, 1, **f32)
            xs = (torch.arange(w, **f32) + 0.5) / w
            ys = (torch.arange(h, **f32) + 0.5) / h
            inside = ((xs.view(1, 1, w) - cx).abs() < self.cutout_size / 2) & \
                     ((ys.view(1, h, 1) - cy).abs() < self.cutout_size / 2)
            keep = ~(inside & m.view(n, 1, 1))
            x = x * keep.unsqueeze(1).to(x.dtype)
        return x


def _reflect_coords(c: Tensor, size: int) -> Tensor:
    """Pixel coordinates reflected into [-0.5, size - 0.5] (align_corners=False), then clamped to
    valid indices, as grid_sample's reflection padding does."""
    c = (c + 0.5).abs()
    flips = torch.floor(c / size)
    extra = c - flips * size
    c = torch.where(torch.remainder(flips, 2) == 0, extra, size - extra)
    return (c - 0.5).clamp(0, size - 1)


def bilinear_sample_reflect(x: Tensor, grid: Tensor) -> Tensor:
    """Bilinear resampling of x [N,C,H,W] at grid [N,Ho,Wo,2] (normalised xy, align_corners=False)
    with reflection padding; same values as F.grid_sample, but differentiable twice w.r.t. x."""
    n, c, h, w = x.shape
    ix = _reflect_coords(((grid[..., 0] + 1) * w - 1) / 2, w)
    iy = _reflect_coords(((grid[..., 1] + 1) * h - 1) / 2, h)
    x0, y0 = ix.floor(), iy.floor()
    wx, wy = (ix - x0).unsqueeze(1), (iy - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1).clamp(max=w - 1), (y0 + 1).clamp(max=h - 1)
    flat = x.reshape(n, c, h * w)

    def tap(yy: Tensor, xx: Tensor) -> Tensor:
        idx = (yy * w + xx).reshape(n, 1, -1).expand(n, c, -1)
        return flat.gather(2, idx).reshape(n, c, *yy.shape[1:])

    top = tap(y0, x0) * (1 - wx) + tap(y0, x1) * wx
    bottom = tap(y1, x0) * (1 - wx) + tap(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def _diag(sx: Tensor, sy: Tensor) -> Tensor:
    """[N] scales -> [N, 3, 3]."""
    one = torch.ones_like(sx)
    return torch.diag_embed(torch.stack([sx, sy, one], 1))


def _translate(tx: Tensor, ty: Tensor) -> Tensor:
    """[N] offsets -> [N, 3, 3]."""
    t = torch.eye(3, device=tx.device, dtype=tx.dtype).repeat(tx.shape[0], 1, 1)
    t[:, 0, 2] = tx
    t[:, 1, 2] = ty
    return t


def _rotate(theta: Tensor) -> Tensor:
    """[N] angles (radians) -> [N, 3, 3]."""
    c, s = torch.cos(theta), torch.sin(theta)
    z, o = torch.zeros_like(theta), torch.ones_like(theta)
    return torch.stack([c, -s, z, s, c, z, z, z, o], 1).view(-1, 3, 3)


class AdaptiveP(nn.Module):
    """ADA's overfitting heuristic, all on the device.

    accumulate(real_logits [N, 1]) adds sum(sign(logits)) and N to device accumulators;
    update(pipe, batch_size, steps) moves ``pipe.p`` by sign(r_t - target) * adjust and resets
    the accumulators, where adjust = batch_size * steps / (speed_kimg * 1000). ``r_t`` (the
    last value) is kept as a buffer for logging.
    """

    def __init__(self, target: float = 0.6, speed_kimg: float = 500.0):
        super().__init__()
        self.target = float(target)
        self.speed_kimg = float(speed_kimg)
        self.register_buffer("sign_sum", torch.zeros([]))
        self.register_buffer("count", torch.zeros([]))
        self.register_buffer("rt", torch.zeros([]))

    @torch.no_grad()
    def accumulate(self, real_logits: Tensor) -> None:
        self.sign_sum.add_(real_logits.detach().float().sign().sum())
        self.count.add_(real_logits.numel())

    @torch.no_grad()
    def update(self, pipe: AugmentPipe, batch_size: int, steps: int) -> None:
        rt = self.sign_sum / self.count.clamp(min=1)
        self.rt.copy_(rt)
        adjust = torch.sign(rt - self.target) * (batch_size * steps / (self.speed_kimg * 1000.0))
        # No images seen -> no move (count == 0 gives rt == 0; mask it out).
        adjust = adjust * (self.count > 0)
        pipe.set_p(pipe.p + adjust)
        self.sign_sum.zero_()
        self.count.zero_()


def label_preserving_pipe(p: float = 1.0, strength: float = 1.0) -> AugmentPipe:
    """Augmentations that keep a face caption true: small shifts, zoom and colour changes only.

    No x-flip ("turning left" would become "turning right"), no rotation ("tilting head") and no
    cutout (it can hide the mouth or an eye). Used to make the small CLIP robust and to average
    the animator's CLIP loss over views, so that neither can be satisfied by pixel-level patterns.
    """
    s = float(strength)
    return AugmentPipe(p=p, xflip=False, rotate=False, cutout=False, translate_max=0.0625 * s,
                       scale_std=0.1 * s, brightness_std=0.1 * s, contrast_std=0.25 * s, saturation_std=0.25 * s)


def augmented_views(images: Tensor, pipe: AugmentPipe, views: int, noise_std: float = 0.0) -> Tensor:
    """images [N, C, H, W] -> [(1 + views) * N, C, H, W]: the images, then ``views`` augmented
    copies (view-major), each with optional Gaussian pixel noise. Differentiable in ``images``."""
    if views <= 0:
        return images
    rep = images.repeat(views, 1, 1, 1)
    aug = pipe(rep)
    if noise_std > 0:
        aug = aug + noise_std * torch.randn_like(aug)
    return torch.cat([images, aug], dim=0)


def degrade(images: torch.Tensor, generator: torch.Generator, strength: float) -> torch.Tensor:
    """Random per-image blur (down- and up-sampling), contrast and pixel noise: [N,3,R,R] -> same.

    strength in [0, 1] scales every degradation (0: unchanged). Randomness from the CPU ``generator``.
    """
    if strength <= 0:
        return images
    n, _, r, _ = images.shape
    dev = images.device
    u = torch.rand(n, 3, generator=generator).to(dev)
    out = images
    low = max(8, int(r * (1.0 - 0.5 * strength)))  # blur: through a coarser grid for half the faces
    blurred = resize(resize(images, (low, low), mode="bilinear", antialias=True), (r, r), mode="bilinear")
    out = torch.where((u[:, 0] < 0.5).view(n, 1, 1, 1), blurred, out)
    contrast = 1.0 + strength * 0.3 * (u[:, 1] - 0.5).view(n, 1, 1, 1)
    out = out * contrast
    # noise drawn on the images' device (a CPU draw of [3B,3,R,R] would bound the step time)
    device_gen = torch.Generator(device=dev).manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
    noise = torch.randn(images.shape, generator=device_gen, device=dev)
    out = out + strength * 0.05 * u[:, 2].view(n, 1, 1, 1) * noise
    return out.clamp(-1, 1)
