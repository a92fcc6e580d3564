"""Drawing primitives of the face renderer: implicit shapes, coverage and compositing.

Every shape is an approximate signed distance ``d`` in image units (the image spans [-1, 1]),
evaluated on a pixel grid for the whole batch at once; anti-aliased coverage is
``clamp(0.5 - d / pixel, 0, 1)`` and layers are alpha-composited back to front with in-place
``lerp_``. Colours are [N, 3, 1, 1] (or full images [N, 3, h, w]).
"""
from __future__ import annotations

import torch

from src.utils.constants import device_constant


def coverage(d: torch.Tensor, px: float) -> torch.Tensor:
    """Anti-aliased coverage of the region d < 0 (d in image units, px = pixel size)."""
    return (0.5 - d / px).clamp(0.0, 1.0)


def smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def sd_ellipse(x, y, rx, ry) -> torch.Tensor:
    """Approximate signed distance to an axis-aligned ellipse with radii rx, ry.

    d = (k0 - 1) * k0 / k1 with k0 = |p / r|, k1 = |p / r^2| (exact on the boundary to first
    order); the small offsets keep the centre at d = -min(r) instead of 0 / 0.
    """
    ax, ay = x / rx, y / ry
    k0 = torch.sqrt(ax * ax + ay * ay)
    bx, by = ax / rx, ay / ry
    k1 = torch.sqrt(bx * bx + by * by)
    rmin = torch.minimum(torch.as_tensor(rx), torch.as_tensor(ry)) if torch.is_tensor(rx) or torch.is_tensor(ry) \
        else min(rx, ry)
    return (k0 - 1.0) * (k0 + 1e-3) / (k1 + 1e-3 / rmin)


def sd_box(x, y, bx, by, r) -> torch.Tensor:
    """Signed distance to a rounded box of half sizes bx, by and corner radius r."""
    qx = x.abs() - bx + r
    qy = y.abs() - by + r
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside - r


def sd_segment(x, y, ax, ay, bx, by, r) -> torch.Tensor:
    """Signed distance to a capsule from (ax, ay) to (bx, by) with radius r."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-12)).clamp(0.0, 1.0)
    dx, dy = pax - bax * h, pay - bay * h
    return torch.sqrt(dx * dx + dy * dy) - r


def over(canvas: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> None:
    """In-place 'over' compositing: canvas [N,3,h,w], alpha [N,h,w], color [N,3,1,1] or [N,3,h,w]."""
    canvas.lerp_(color.expand_as(canvas) if color.shape[2:] != canvas.shape[2:] else color, alpha.unsqueeze(1))


def as_color(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3] -> [N, 3, 1, 1] for broadcasting against images."""
    return rgb[:, :, None, None]


def const_color(rgb, n: int, ref: torch.Tensor) -> torch.Tensor:
    return device_constant(rgb, torch.float32, ref.device).view(1, 3, 1, 1).expand(n, 3, 1, 1)
