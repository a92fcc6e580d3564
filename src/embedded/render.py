"""Vectorised 2D face renderer: [N, P] parameters -> [N, 3, R, R] images in [-1, 1].

Every layer is an implicit shape (approximate signed distance ``d`` in image units, where the
image spans [-1, 1]) evaluated on the pixel grid for the whole batch at once; anti-aliased
coverage is ``clamp(0.5 - d / pixel, 0, 1)`` and layers are alpha-composited back to front.
There is no Python loop over samples (only over the two eyes/brows and over memory chunks), so it
runs batched on CPU or CUDA in float32.

Geometry lives in *head coordinates* (u, v): origin at the face centre, v pointing down, in image
units divided by the head scale. Head roll rotates the grid about the neck; head yaw moves each
feature sideways by ``depth * sin(yaw)`` and squashes it horizontally by ``cos(yaw)``, so features
at different depths (ears, eyes, nose) move by different amounts, which reads as a turn.

Speed: the small, detailed features (eyes + brows + glasses + tears, nose + mouth) are evaluated
only on per-sample pixel windows around them (gathered from and scattered back into the canvas),
so most of the work runs on ~40 % of the pixels; compositing uses in-place ``lerp_``.
"""
from __future__ import annotations

import math

import torch

from src.embedded.params import (
    EYE_COLORS,
    GLASSES_COLORS,
    HAIR_COLORS,
    HAIR_STYLES,
    PARAM_SPACE,
    SKIN_TONES,
    hsv_to_rgb,
    palette,
)
from src.utils.errors import UserError

# Per hair style (rows follow HAIR_STYLES): back-hair box (width pad, top pad, bottom v, corner
# radius, bump amplitude, present), front cap (pad, hairline centre v, hairline side drop, sweep,
# opacity). One generic shape evaluated with per-sample rows replaces a branch per style.
_HAIR_TABLE = [
    # w_pad top_pad bottom  r    bumps back  cap_pad  hl_c   hl_k  sweep  alpha
    [0.00, 0.00, -0.20, 0.10, 0.000, 0.0, 0.015, -0.36, 0.30, 0.00, 0.55],  # buzz cut
    [0.05, 0.07, -0.02, 0.25, 0.000, 1.0, 0.060, -0.33, 0.34, 0.10, 1.00],  # short
    [0.13, 0.08, 0.85, 0.20, 0.000, 1.0, 0.070, -0.34, 0.30, 0.00, 1.00],  # long
    [0.11, 0.09, 0.30, 0.14, 0.000, 1.0, 0.080, -0.21, 0.08, 0.00, 1.00],  # bob with a fringe
    [0.22, 0.24, 0.22, 0.60, 0.022, 1.0, 0.150, -0.33, 0.30, 0.00, 1.00],  # curly
    [0.10, 0.08, 0.55, 0.20, 0.000, 1.0, 0.075, -0.30, 0.26, 0.14, 1.00],  # side-swept
]
assert len(_HAIR_TABLE) == len(HAIR_STYLES)

_PIVOT_Y = 0.62      # neck pivot of head roll (image units)
_HEAD_Y = -0.08      # face centre in the image (image units)
_HEAD_UNIT = 1.3     # image units per head unit at head_scale 1 (the face fills most of the frame)
_ROLL_MAX = 0.32     # radians at roll = +-1
_YAW_MAX_SIN = 0.5   # sin(yaw) at yaw = +-1 (30 degrees)
_EYE_Y = -0.08       # eye line (head units)


def _cov(d: torch.Tensor, px: float) -> torch.Tensor:
    """Anti-aliased coverage of the region d < 0 (d in image units, px = pixel size)."""
    return (0.5 - d / px).clamp(0.0, 1.0)


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(x, y, rx, ry) -> torch.Tensor:
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


def _box(x, y, bx, by, r) -> torch.Tensor:
    """Signed distance to a rounded box of half sizes bx, by and corner radius r."""
    qx = x.abs() - bx + r
    qy = y.abs() - by + r
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0)
    return outside + inside - r


def _segment(x, y, ax, ay, bx, by, r) -> torch.Tensor:
    """Signed distance to a capsule from (ax, ay) to (bx, by) with radius r."""
    pax, pay = x - ax, y - ay
    bax, bay = bx - ax, by - ay
    h = ((pax * bax + pay * bay) / (bax * bax + bay * bay + 1e-12)).clamp(0.0, 1.0)
    dx, dy = pax - bax * h, pay - bay * h
    return torch.sqrt(dx * dx + dy * dy) - r


def _over(canvas: torch.Tensor, alpha: torch.Tensor, color: torch.Tensor) -> None:
    """In-place 'over' compositing: canvas [N,3,h,w], alpha [N,h,w], color [N,3,1,1] or [N,3,h,w]."""
    canvas.lerp_(color.expand_as(canvas) if color.shape[2:] != canvas.shape[2:] else color, alpha.unsqueeze(1))


def _col(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 3] -> [N, 3, 1, 1] for broadcasting against images."""
    return rgb[:, :, None, None]


def _const(rgb, n: int, ref: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rgb, dtype=torch.float32, device=ref.device).view(1, 3, 1, 1).expand(n, 3, 1, 1)


def render(params: torch.Tensor, resolution: int = 128, max_pixels_per_chunk: int | None = None) -> torch.Tensor:
    """Render faces.

    params: [N, P] in natural units (see PARAMS), on the device to render on.
    resolution: output size R (16..1024).
    Returns [N, 3, R, R] float32 in [-1, 1] on params.device.
    """
    PARAM_SPACE.check(params)
    if not isinstance(resolution, int) or not 16 <= resolution <= 1024:
        raise UserError(f"render resolution must be an integer in 16..1024, got {resolution!r}")
    params = PARAM_SPACE.clamp(params.float())
    n = params.shape[0]
    if max_pixels_per_chunk is None:
        # bound temporaries (~40 live [chunk, R, R] tensors) to a few hundred MB on CPU, ~GBs on GPU
        max_pixels_per_chunk = (1 << 26) if params.is_cuda else (1 << 21)
    chunk = max(1, max_pixels_per_chunk // (resolution * resolution))
    out = torch.empty(n, 3, resolution, resolution, device=params.device)
    for s in range(0, n, chunk):
        out[s:s + chunk] = _render_chunk(params[s:s + chunk], resolution)
    return out


class _Frame:
    """Head coordinates of a pixel grid (the full image or per-sample windows).

    X [1|N, 1, w], Y [1|N, h, 1]: pixel centres in image units; u, v [N, h, w]: head coordinates.
    """

    def __init__(self, X: torch.Tensor, Y: torch.Tensor, g: "_Geometry"):
        self.X, self.Y = X, Y
        dy = Y - _PIVOT_Y
        self.u = (g.cr * X + g.sr * dy) / g.s
        self.v = (-g.sr * X + g.cr * dy + _PIVOT_Y - _HEAD_Y) / g.s
        self.sy, self.cy = g.sy, g.cy

    def fu(self, x_front, depth) -> torch.Tensor:
        """Horizontal coordinate relative to a feature at frontal x and depth (squashed by yaw)."""
        return (self.u - (x_front * self.cy + depth * self.sy)) / self.cy


class _Geometry:
    """Per-sample head transform (all fields [N, 1, 1])."""

    def __init__(self, p: dict[str, torch.Tensor]):
        roll = p["roll"] * _ROLL_MAX
        self.cr, self.sr = torch.cos(roll), torch.sin(roll)
        self.s = p["head_scale"] * _HEAD_UNIT
        self.sy = p["yaw"] * _YAW_MAX_SIN
        self.cy = torch.sqrt(1.0 - self.sy * self.sy)

    def to_image(self, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Head coordinates [N,1,1] -> image coordinates (inverse of _Frame's map)."""
        qx, qy = u * self.s, v * self.s + _HEAD_Y - _PIVOT_Y
        return self.cr * qx - self.sr * qy, _PIVOT_Y + self.sr * qx + self.cr * qy


# Feature windows: half extents (a, b) in head units around a centre; the pixel window bounds the
# box rotated by the largest roll at the largest head scale.
_EYE_BOX = (0.16, 0.28)      # eye, brow (raised), glasses (+ half bridge, temple stub), tears
_EYE_BOX_DV = -0.06          # window centre relative to the eye line
_EAR_BOX = (0.07, 0.11)
_MOUTH_BOX = (0.19, 0.34)    # nose and mouth (open, tongue out)
_MOUTH_BOX_V = 0.28


def _window_pixels(box: tuple[float, float], R: int) -> tuple[int, int]:
    a, b = box
    smax = PARAM_SPACE.specs[PARAM_SPACE.idx("head_scale")].high * _HEAD_UNIT
    c, sn = math.cos(_ROLL_MAX), math.sin(_ROLL_MAX)
    hw, hh = smax * (a * c + b * sn), smax * (a * sn + b * c)
    px = 2.0 / R
    return min(R, int(math.ceil(2 * hw / px)) + 2), min(R, int(math.ceil(2 * hh / px)) + 2)


class _Window:
    """Per-sample pixel windows of one size: gather the canvas, draw, scatter back."""

    def __init__(self, canvas: torch.Tensor, geo: _Geometry, cu: torch.Tensor, cv: torch.Tensor,
                 box: tuple[float, float]):
        n, _, R, _ = canvas.shape
        px = 2.0 / R
        ww, wh = _window_pixels(box, R)
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


def _render_chunk(params: torch.Tensor, R: int) -> torch.Tensor:
    n, dev = params.shape[0], params.device
    px = 2.0 / R
    g1 = (torch.arange(R, device=dev, dtype=torch.float32) + 0.5) * px - 1.0
    p = {name: params[:, i].view(n, 1, 1) for i, name in enumerate(PARAM_SPACE.names)}
    flat = {name: params[:, i] for i, name in enumerate(PARAM_SPACE.names)}

    # ---- colours [N, 3, 1, 1] ----
    c = {}
    c["skin"] = skin = _col(palette(flat["skin_tone"], [col for _, col in SKIN_TONES]))
    c["hair"] = hair = _col(palette(flat["hair_color"], [col for _, col in HAIR_COLORS]))
    c["iris"] = _col(palette(flat["eye_color"], [col for _, col in EYE_COLORS]))
    c["frame"] = _col(palette(flat["glasses_color"], [col for _, col in GLASSES_COLORS]))
    bg = _col(hsv_to_rgb(flat["bg_hue"], torch.full_like(flat["bg_hue"], 0.35), flat["bg_light"]))
    shirt = _col(hsv_to_rgb(flat["shirt_hue"], torch.full_like(flat["shirt_hue"], 0.55),
                            torch.full_like(flat["shirt_hue"], 0.62)))
    lip_nat = skin * 0.7 + _const((0.72, 0.22, 0.27), n, skin) * 0.3
    c["lips"] = lip_nat + (_const((0.78, 0.07, 0.16), n, skin) - lip_nat) * (0.8 * p["lipstick"]).unsqueeze(1)
    c["brow"] = torch.minimum(hair * 0.55 + 0.04, skin * 0.45)  # always darker than the skin
    c["dark"] = _const((0.10, 0.06, 0.06), n, skin)
    c["white"] = _const((1.0, 1.0, 1.0), n, skin)

    geo = _Geometry(p)
    s = geo.s
    hpx = px / s  # pixel size in head units [N, 1, 1]
    full = _Frame(g1.view(1, 1, R), g1.view(1, R, 1), geo)
    u, v, sy, sr = full.u, full.v, geo.sy, geo.sr
    X, Y = full.X, full.Y
    W, H = p["face_width"], p["face_length"]

    zero = torch.zeros_like(W)

    # ---- background: vertical gradient ----
    canvas = (bg * (1.10 - 0.10 * (Y + 1.0))).expand(n, 3, R, R).contiguous()

    # ---- hair behind the head ----
    style = p["hair_style"].round().long().clamp(0, len(HAIR_STYLES) - 1).view(n)
    tab = torch.tensor(_HAIR_TABLE, device=dev)[style].view(n, -1, 1, 1)
    w_pad, top_pad, bottom, rad, bumps, has_back = (tab[:, i] for i in range(6))
    cap_pad, hl_c, hl_k, sweep, cap_alpha = (tab[:, i] for i in range(6, 11))
    ub = u + 0.08 * sy  # back hair sits behind the face: it moves against the turn
    top = -H - top_pad
    bcy, bby = (top + bottom) * 0.5, (bottom - top) * 0.5
    bbx = W + w_pad
    d_back = _box(ub, v - bcy, bbx, bby, torch.minimum(rad, torch.minimum(bbx, bby)))
    d_back = d_back - bumps * torch.sin(torch.atan2(v + 0.1, ub) * 18.0)
    hair_tex = 0.95 + 0.05 * torch.sin(u * 90.0 + 6.0 * torch.sin(v * 7.0))
    _over(canvas, _cov(d_back, hpx) * has_back, hair * 0.8 * hair_tex.unsqueeze(1))

    # ---- shoulders and neck (image coordinates: the body does not roll) ----
    d_shirt = _ellipse(X, Y - 1.38, 0.98, 0.52)
    d_neck = _box(X - 0.12 * sr, Y - 0.70, 0.13 * s, 0.30, 0.06)
    neck_shade = 0.72 + 0.18 * ((Y - 0.42) / 0.35).clamp(0.0, 1.0)
    _over(canvas, _cov(d_neck, px), skin * neck_shade.unsqueeze(1))
    _over(canvas, _cov(d_shirt, px), shirt)
    d_collar = _ellipse(X, Y - 0.86, 0.14 * s, 0.08)
    _over(canvas, _cov(torch.maximum(d_collar, -d_shirt), px), skin * 0.82)

    # ---- ears (slightly behind the face outline: they move against the turn; windows) ----
    for side in (-1.0, 1.0):
        win = _Window(canvas, geo, side * (W - 0.015) * geo.cy - 0.12 * sy, zero - 0.02, _EAR_BOX)
        patch = win.gather()
        fr = _Frame(win.X, win.Y, geo)
        ue = fr.fu(side * (W - 0.015), -0.12)
        _over(patch, _cov(_ellipse(ue, fr.v + 0.02, 0.055, 0.09), hpx), skin * 0.92)
        _over(patch, _cov(_ellipse(ue - side * 0.01, fr.v + 0.02, 0.025, 0.05), hpx) * 0.5, skin * 0.7)
        win.scatter(patch)

    # ---- face oval with a jaw taper and edge shading ----
    uf = u - 0.06 * sy
    t = (v / H).clamp(0.0, 1.0)
    wscale = 1.0 - (0.10 + 0.32 * p["jaw"]) * t * t
    d_face = _ellipse(uf / wscale, v, W, H)
    k = torch.sqrt((uf / (wscale * W)) ** 2 + (v / H) ** 2)
    shade = 1.04 - 0.16 * _smoothstep(0.55, 1.0, k) - 0.05 * (uf * sy / W).clamp(min=0)
    _over(canvas, _cov(d_face, hpx), skin * shade.unsqueeze(1))

    # ---- beard (hair colour on the lower face, denser towards the chin) ----
    beard_a = _cov(d_face, hpx) * _smoothstep(0.1, 0.34, v) * (0.85 * p["beard"])
    _over(canvas, beard_a, hair * 0.85)

    # ---- cheeks (one soft blob per side, composited once) ----
    blush = None
    for side in (-1.0, 1.0):
        uc = full.fu(side * 0.24, 0.28)
        b = (1.0 - torch.sqrt(uc * uc + ((v - 0.13) / 0.7) ** 2) / 0.1).clamp(0.0, 1.0)
        blush = b if blush is None else torch.maximum(blush, b)
    _over(canvas, blush * (0.6 * p["blush"]), _const((0.95, 0.30, 0.35), n, skin))

    # ---- nose and mouth (window) ----
    win = _Window(canvas, geo, zero + 0.38 * sy, zero + _MOUTH_BOX_V, _MOUTH_BOX)
    patch = win.gather()
    _draw_nose_mouth(patch, _Frame(win.X, win.Y, geo), p, c, hpx)
    win.scatter(patch)

    # ---- eyes and tears (windows) ----
    es = p["eye_spacing"]
    eye_windows = []
    for side in (-1.0, 1.0):
        # the window leans towards the midline so that it holds half of the glasses' bridge
        win = _Window(canvas, geo, side * (es - 0.02) * geo.cy + 0.3 * sy, zero + _EYE_Y + _EYE_BOX_DV, _EYE_BOX)
        patch = win.gather()
        _draw_eye(patch, _Frame(win.X, win.Y, geo), p, c, hpx, side)
        win.scatter(patch)
        eye_windows.append(win)

    # ---- hair in front (cap above the hairline) ----
    uh = u - 0.03 * sy
    xn = uh / W
    hl = hl_c + hl_k * xn * xn + sweep * xn + 0.01 * torch.sin(uh * 45.0)  # uneven hair tips
    dhl = (2.0 * hl_k * xn + sweep) / W
    d_line_h = (v - hl) / torch.sqrt(1.0 + dhl * dhl)
    d_capell = _ellipse(uh, v + 0.03, W + cap_pad, H + cap_pad + 0.03)
    d_cap = torch.maximum(d_capell, d_line_h)
    cap_tex = 0.95 + 0.05 * torch.sin(uh * 90.0 + 30.0 * (v + 0.6) * xn) - 0.08 * _smoothstep(-0.06, 0.0, d_capell)
    _over(canvas, _cov(d_cap, hpx) * cap_alpha, hair * cap_tex.unsqueeze(1))

    # ---- eyebrows (over the fringe, like a cartoon, so they stay visible) and glasses (windows) ----
    for side, win in zip((-1.0, 1.0), eye_windows):
        patch = win.gather()
        _draw_brow_glasses(patch, _Frame(win.X, win.Y, geo), p, c, hpx, side)
        win.scatter(patch)

    return (canvas * 2.0 - 1.0).clamp(-1.0, 1.0)


def _draw_nose_mouth(canvas: torch.Tensor, fr: _Frame, p: dict, c: dict, hpx: torch.Tensor) -> None:
    """Nose and mouth into canvas [N, 3, h, w] (in place)."""
    n, v, skin, lips = canvas.shape[0], fr.v, c["skin"], c["lips"]
    ns = p["nose_size"]
    un = fr.fu(0.0, 0.45)
    _over(canvas, _cov(_ellipse(un, v - 0.13 * ns, 0.05 * ns, 0.026 * ns), hpx) * 0.18, skin * 0.6)
    _over(canvas, _cov(_segment(un, v, -0.03 * ns, -0.02, -0.042 * ns, 0.095 * ns, 0.005), hpx) * 0.3, skin * 0.6)
    d_nos = torch.minimum(_ellipse(un + 0.027 * ns, v - 0.135 * ns, 0.013 * ns, 0.008 * ns),
                          _ellipse(un - 0.027 * ns, v - 0.135 * ns, 0.013 * ns, 0.008 * ns))
    _over(canvas, _cov(d_nos, hpx) * 0.85, skin * 0.45)
    _over(canvas, _cov(_ellipse(un, v - 0.095 * ns, 0.012 * ns, 0.02 * ns), hpx) * 0.25, c["white"])

    smile, mopen, pout, smirk = p["smile"], p["mouth_open"], p["pout"], p["smirk"]
    mw = 0.12 * p["mouth_width"] * (1.0 - 0.38 * pout) * (1.0 + 0.12 * smile.clamp(min=0))
    um = fr.fu(0.0, 0.38)
    vm = v - (0.30 + 0.025 * mopen)
    tm = um / mw
    a = (1.0 - tm * tm).clamp(min=0.0)
    sa = torch.sqrt(a + 1e-6)
    # centre line: corners up for a smile, down for a frown; a smirk lifts one corner
    centre = smile * 0.045 * (0.45 - tm * tm) - smirk.abs() * 0.04 * (tm * torch.sign(smirk)).clamp(min=0) ** 2
    oh = 0.14 * mopen
    upper = centre - 0.22 * oh * sa
    lower = centre + 0.78 * oh * sa
    side_d = um.abs() - mw
    tu = (0.014 + 0.03 * pout) * sa + 0.002
    tl = (0.020 + 0.034 * pout) * sa + 0.002
    # lower lip, interior (+ teeth, tongue), mouth line, tongue out, upper lip
    d_ll = torch.maximum(torch.maximum(lower - vm, vm - lower - tl), side_d - 0.004)
    _over(canvas, _cov(d_ll, hpx), lips * 1.05)
    d_in = torch.maximum(torch.maximum(upper - vm, vm - lower), side_d)
    _over(canvas, _cov(d_in, hpx), _const((0.22, 0.05, 0.07), n, skin))
    _over(canvas, _cov(torch.maximum(d_in, vm - upper - 0.03 * sa), hpx), _const((0.97, 0.96, 0.92), n, skin))
    tongue_in = _cov(torch.maximum(d_in, _ellipse(um, vm - lower, 0.6 * mw, 0.045)), hpx)
    _over(canvas, tongue_in, _const((0.80, 0.35, 0.40), n, skin))
    d_line = torch.maximum((vm - centre).abs() - 0.004, side_d)
    _over(canvas, _cov(d_line, hpx) * 0.9, lips * 0.45)
    tg = p["tongue"]
    tg_a = (tg * 5.0).clamp(max=1.0)
    d_tongue = _ellipse(um, vm - centre - 0.01 - 0.045 * tg, 0.048, 0.012 + 0.042 * tg)
    d_tongue = torch.maximum(d_tongue, centre - vm)
    _over(canvas, _cov(d_tongue, hpx) * tg_a, _const((0.90, 0.40, 0.47), n, skin))
    d_tline = _segment(um, vm - centre, 0.0, 0.0, 0.0, 0.02 + 0.06 * tg, 0.003)
    _over(canvas, _cov(torch.maximum(d_tline, d_tongue), hpx) * tg_a * 0.5, _const((0.6, 0.2, 0.25), n, skin))
    d_ul = torch.maximum(torch.maximum(upper - tu - vm, vm - upper), side_d - 0.004)
    _over(canvas, _cov(d_ul, hpx), lips)


def _draw_eye(canvas: torch.Tensor, fr: _Frame, p: dict, c: dict, hpx: torch.Tensor, side: float) -> None:
    """One eye (side -1 = image left) with its tears into canvas [N, 3, h, w] (in place)."""
    n, skin = canvas.shape[0], c["skin"]
    es, esz = p["eye_spacing"], p["eye_size"]
    o = p["eye_open_l" if side < 0 else "eye_open_r"]
    rx = 0.078 * esz
    ue = fr.fu(side * es, 0.3)
    ve = fr.v - _EYE_Y
    te = ue / rx
    ae = (1.0 - te * te).clamp(min=0.0)
    cu = (0.008 - 0.075 * o) * esz  # upper lid height at the centre (negative = up)
    cl = (0.008 + 0.026 * o) * esz  # lower lid
    up_l, lo_l = cu * ae, cl * ae
    gu = torch.sqrt(1.0 + (2.0 * cu * te / rx) ** 2)
    gl = torch.sqrt(1.0 + (2.0 * cl * te / rx) ** 2)
    sdx = ue.abs() - rx
    ap = _cov(torch.maximum(torch.maximum((up_l - ve) / gu, (ve - lo_l) / gl), sdx), hpx)
    _over(canvas, ap, _const((0.97, 0.97, 0.95), n, skin))
    iu = ue - p["gaze_x"] * 0.045 * esz
    iv = ve - (p["gaze_y"] * 0.024 * esz - 0.004)
    ri = 0.036 * esz
    d_iris = _ellipse(iu, iv, ri, ri)
    ring = 0.7 + 0.45 * (-d_iris / ri).clamp(0.0, 1.0)
    _over(canvas, ap * _cov(d_iris, hpx), c["iris"] * ring.unsqueeze(1))
    _over(canvas, ap * _cov(_ellipse(iu, iv, 0.016 * esz, 0.016 * esz), hpx), _const((0.03, 0.02, 0.02), n, skin))
    d_hl = _ellipse(iu - 0.012 * esz, iv + 0.012 * esz, 0.008 * esz, 0.008 * esz)
    _over(canvas, ap * _cov(d_hl, hpx) * 0.9, c["white"])
    # upper lid line with lashes, lower lid, and a faint crease above
    _over(canvas, _cov(torch.maximum((ve - up_l).abs() / gu - 0.0065 * esz, sdx - 0.006), hpx), c["dark"])
    _over(canvas, _cov(torch.maximum((ve - lo_l).abs() / gl - 0.002, sdx + 0.01), hpx) * 0.35, c["dark"])
    d_crease = torch.maximum((ve - up_l + 0.024 * ae + 0.006).abs() - 0.003, sdx + 0.012)
    _over(canvas, _cov(d_crease, hpx) * 0.25 * (o * 2.0).clamp(max=1.0), skin * 0.55)
    # tears: a streak and a drop under the eye
    tr = p["tears"]
    d_streak = _segment(ue, ve, side * 0.02, 0.04, side * 0.025, 0.05 + 0.2 * tr, 0.008)
    d_drop = _ellipse(ue - side * 0.025, ve - 0.06 - 0.2 * tr, 0.014, 0.02)
    tear_a = (tr * 3.0).clamp(max=1.0) * 0.85
    _over(canvas, _cov(torch.minimum(d_streak, d_drop), hpx) * tear_a, _const((0.55, 0.78, 1.0), n, skin))
    _over(canvas, _cov(_ellipse(ue - side * 0.028, ve - 0.055 - 0.2 * tr, 0.004, 0.006), hpx) * tear_a, c["white"])


def _draw_brow_glasses(canvas: torch.Tensor, fr: _Frame, p: dict, c: dict, hpx: torch.Tensor, side: float) -> None:
    """One eyebrow and one glasses rim into canvas [N, 3, h, w] (in place)."""
    n = canvas.shape[0]
    es, esz, raise_ = p["eye_spacing"], p["eye_size"], p["brow_raise"]
    ub = fr.fu(side * (es + 0.005), 0.3)
    lift = 0.045 * raise_ + 0.055 * (side * p["brow_asym"]).clamp(min=0) - 0.015 * (-side * p["brow_asym"]).clamp(min=0)
    vb = fr.v - (_EYE_Y - 0.105 * esz - lift)
    L = 0.082 * esz
    slope = -side * 0.45 * p["brow_angle"]      # angry: the inner end goes down
    arch = 2.2 + 2.0 * raise_.clamp(min=0)
    yc = slope * ub + arch * ub * ub
    thick = 0.0145 * p["brow_thickness"] * (1.0 + 0.35 * (-side * ub / L)).clamp(0.4, 1.5)
    d_brow = _ellipse(ub, (vb - yc) / torch.sqrt(1.0 + (slope + 2 * arch * ub) ** 2), L, thick)
    _over(canvas, _cov(d_brow, hpx), c["brow"])
    on = (p["glasses"] >= 0.5).float()
    bx, by = 0.098 * esz + 0.005, 0.066
    ug = fr.fu(side * es, 0.33)
    d_frame = _box(ug, fr.v - (_EYE_Y + 0.008), bx, by, 0.035)
    _over(canvas, _cov(d_frame, hpx) * on * 0.12, _const((0.85, 0.92, 1.0), n, canvas))
    # rim, half of the bridge (to the midline of the two rims) and a stub of the temple
    d = d_frame.abs() - 0.008
    d_bridge = _segment(ug, fr.v, -side * bx, _EYE_Y - 0.02, -side * es, _EYE_Y - 0.02, 0.007)
    d_temple = _segment(ug, fr.v, side * bx, _EYE_Y - 0.03, side * (bx + 0.05), _EYE_Y - 0.04, 0.006)
    d = torch.minimum(d, torch.minimum(d_bridge, d_temple))
    _over(canvas, _cov(d, hpx) * on, c["frame"])
