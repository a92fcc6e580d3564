"""Head geometry of the face renderer: head coordinates and per-sample pixel windows.

Geometry lives in *head coordinates* (u, v): origin at the face centre, v pointing down, in image
units divided by the head scale. Head roll rotates the grid about the neck; head yaw moves each
feature sideways by ``depth * sin(yaw)`` and squashes it horizontally by ``cos(yaw)``, so features
at different depths (ears, eyes, nose) move by different amounts, which reads as a turn.

Small, detailed features are drawn only on per-sample pixel windows around them (:class:`Window`:
gathered from and scattered back into the canvas) instead of on the whole image.
"""
from __future__ import annotations

import math

import torch

from src.embedded.params import PARAM_SPACE

PIVOT_Y = 0.62      # neck pivot of head roll (image units)
HEAD_Y = -0.08      # face centre in the image (image units)
HEAD_UNIT = 1.3     # image units per head unit at head_scale 1 (the face fills most of the frame)
ROLL_MAX = 0.32     # radians at roll = +-1
YAW_MAX_SIN = 0.5   # sin(yaw) at yaw = +-1 (30 degrees)
EYE_Y = -0.08       # eye line (head units)


class Frame:
    """Head coordinates of a pixel grid (the full image or per-sample windows).

    X [1|N, 1, w], Y [1|N, h, 1]: pixel centres in image units; u, v [N, h, w]: head coordinates.
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, g: "Geometry"):
        self.X, self.Y = X, Y
        dy = Y - PIVOT_Y
        self.u = (g.cr * X + g.sr * dy) / g.s
        self.v = (-g.sr * X + g.cr * dy + PIVOT_Y - HEAD_Y) / g.s
        self.sy, self.cy = g.sy, g.cy

    def fu(self, x_front, depth) -> torch.Tensor:
        """Horizontal coordinate relative to a feature at frontal x and depth (squashed by yaw)."""
        return (self.u - (x_front * self.cy + depth * self.sy)) / self.cy


class Geometry:
    """Per-sample head transform (all fields [N, 1, 1])."""

    def __init__(self, p: dict[str, torch.Tensor]):
        roll = p["roll"] * ROLL_MAX
        self.cr, self.sr = torch.cos(roll), torch.sin(roll)
        self.s = p["head_scale"] * HEAD_UNIT
        self.sy = p["yaw"] * YAW_MAX_SIN
        self.cy = torch.sqrt(1.0 - self.sy * self.sy)

    def to_image(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head coordinates [N,1,1] -> image coordinates (inverse of Frame's map)."""
        qx, qy = u * self.s, v * self.s + HEAD_Y - PIVOT_Y
        return self.cr * qx - self.sr * qy, PIVOT_Y + self.sr * qx + self.cr * qy


def window_pixels(box: tuple[float, float], R: int) -> tuple[int, int]:
    """Pixel size (w, h) of a window that holds a box of half extents ``box`` (head units) at any
    roll and the largest head scale, on an R x R image."""
    a, b = box
    smax = PARAM_SPACE.specs[PARAM_SPACE.idx("head_scale")].high * HEAD_UNIT
    c, sn = math.cos(ROLL_MAX), math.sin(ROLL_MAX)
    hw, hh = smax * (a * c + b * sn), smax * (a * sn + b * c)
    px = 2.0 / R
    return min(R, int(math.ceil(2 * hw / px)) + 2), min(R, int(math.ceil(2 * hh / px)) + 2)


class Window:
    """Per-sample pixel windows of one size: gather the canvas, draw, scatter back."""

    def __init__(self, canvas: torch.Tensor, geo: Geometry, cu: torch.Tensor, cv: torch.Tensor,
                 box: tuple[float, float]):
        n, _, R, _ = canvas.shape
        px = 2.0 / R
        ww, wh = window_pixels(box, R)
        x, y = geo.to_image(cu, cv)
        ox = torch.round((x.view(n) + 1.0) / px - ww / 2).clamp(0, R - ww).long()
        oy = torch.round((y.view(n) + 1.0) / px - wh / 2).clamp(0, R - wh).long()
        ax = torch.arange(ww, device=canvas.device)
        ay = torch.arange(wh, device=canvas.device)
        cols = ox.view(n, 1, 1) + ax.view(1, 1, ww)
        rows = oy.view(n, 1, 1) + ay.view(1, wh, 1)
        self.index = (rows * R + cols).view(n, 1, wh * ww).expand(n, 3, wh * ww)
        self.shape = (n, 3, wh, ww)
        self.canvas = canvas
        self.X = (cols.float() + 0.5) * px - 1.0     # [N, 1, ww]
        self.Y = (rows.float() + 0.5) * px - 1.0     # [N, wh, 1]

    def gather(self) -> torch.Tensor:
        n = self.shape[0]
        return self.canvas.view(n, 3, -1).gather(2, self.index).view(self.shape)

    def scatter(self, patch: torch.Tensor) -> None:
        n = self.shape[0]
        self.canvas.view(n, 3, -1).scatter_(2, self.index, patch.reshape(n, 3, -1))
