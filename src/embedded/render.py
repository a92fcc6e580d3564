"""Vectorised 2D face renderer: [N, P] parameters -> [N, 3, R, R] images in [-1, 1].

The face is composited back to front from implicit shapes (:mod:`src.embedded.shapes`) placed in
head coordinates (:mod:`src.embedded.head`). There is no Python loop over samples (only over the
two eyes/brows/ears and over memory chunks), so it runs batched on CPU or CUDA in float32.

Speed: the small, detailed features (eyes + brows + glasses + tears, nose + mouth:
:mod:`src.embedded.face_parts`; ears) are evaluated only on per-sample pixel windows around them,
so most of the work runs on ~40 % of the pixels.
"""
from __future__ import annotations

import torch

from src.embedded.face_parts import draw_brow_glasses, draw_eye, draw_nose_mouth
from src.embedded.head import EYE_Y, Frame, Geometry, Window
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
from src.embedded.shapes import as_color, const_color, coverage, over, sd_box, sd_ellipse, smoothstep
from src.utils.constants import device_constant
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

# Feature windows: half extents (a, b) in head units around a centre; the pixel window bounds the
# box rotated by the largest roll at the largest head scale.
_EYE_BOX = (0.16, 0.28)      # eye, brow (raised), glasses (+ half bridge, temple stub), tears
_EYE_BOX_DV = -0.06          # window centre relative to the eye line
_EAR_BOX = (0.07, 0.11)
_MOUTH_BOX = (0.19, 0.34)    # nose and mouth (open, tongue out)
_MOUTH_BOX_V = 0.28


def render(params: torch.Tensor, resolution: int = 128, max_pixels_per_chunk: int | None = None,
           check_finite: bool = True) -> torch.Tensor:
    """Render faces.

    params: [N, P] in natural units (see PARAMS), on the device to render on.
    resolution: output size R (16..1024).
    check_finite: refuse NaN/inf parameters (a host sync for GPU tensors; callers that drew the
        parameters themselves, e.g. with ``sample_params``, may skip it).
    Returns [N, 3, R, R] float32 in [-1, 1] on params.device.
    """
    PARAM_SPACE.check(params, finite=check_finite)
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


def _render_chunk(params: torch.Tensor, R: int) -> torch.Tensor:
    n, dev = params.shape[0], params.device
    px = 2.0 / R
    g1 = (torch.arange(R, device=dev, dtype=torch.float32) + 0.5) * px - 1.0
    p = {name: params[:, i].view(n, 1, 1) for i, name in enumerate(PARAM_SPACE.names)}
    flat = {name: params[:, i] for i, name in enumerate(PARAM_SPACE.names)}

    # ---- colours [N, 3, 1, 1] ----
    c = {}
    c["skin"] = skin = as_color(palette(flat["skin_tone"], [col for _, col in SKIN_TONES]))
    c["hair"] = hair = as_color(palette(flat["hair_color"], [col for _, col in HAIR_COLORS]))
    c["iris"] = as_color(palette(flat["eye_color"], [col for _, col in EYE_COLORS]))
    c["frame"] = as_color(palette(flat["glasses_color"], [col for _, col in GLASSES_COLORS]))
    bg = as_color(hsv_to_rgb(flat["bg_hue"], torch.full_like(flat["bg_hue"], 0.35), flat["bg_light"]))
    shirt = as_color(hsv_to_rgb(flat["shirt_hue"], torch.full_like(flat["shirt_hue"], 0.55),
                            torch.full_like(flat["shirt_hue"], 0.62)))
    lip_nat = skin * 0.7 + const_color((0.72, 0.22, 0.27), n, skin) * 0.3
    c["lips"] = lip_nat + (const_color((0.78, 0.07, 0.16), n, skin) - lip_nat) * (0.8 * p["lipstick"]).unsqueeze(1)
    c["brow"] = torch.minimum(hair * 0.55 + 0.04, skin * 0.45)  # always darker than the skin
    c["dark"] = const_color((0.10, 0.06, 0.06), n, skin)
    c["white"] = const_color((1.0, 1.0, 1.0), n, skin)

    geo = Geometry(p)
    s = geo.s
    hpx = px / s  # pixel size in head units [N, 1, 1]
    full = Frame(g1.view(1, 1, R), g1.view(1, R, 1), geo)
    u, v, sy, sr = full.u, full.v, geo.sy, geo.sr
    X, Y = full.X, full.Y
    W, H = p["face_width"], p["face_length"]

    zero = torch.zeros_like(W)

    # ---- background: vertical gradient ----
    canvas = (bg * (1.10 - 0.10 * (Y + 1.0))).expand(n, 3, R, R).contiguous()

    # ---- hair behind the head ----
    style = p["hair_style"].round().long().clamp(0, len(HAIR_STYLES) - 1).view(n)
    tab = device_constant(_HAIR_TABLE, torch.float32, dev)[style].view(n, -1, 1, 1)
    w_pad, top_pad, bottom, rad, bumps, has_back = (tab[:, i] for i in range(6))
    cap_pad, hl_c, hl_k, sweep, cap_alpha = (tab[:, i] for i in range(6, 11))
    ub = u + 0.08 * sy  # back hair sits behind the face: it moves against the turn
    top = -H - top_pad
    bcy, bby = (top + bottom) * 0.5, (bottom - top) * 0.5
    bbx = W + w_pad
    d_back = sd_box(ub, v - bcy, bbx, bby, torch.minimum(rad, torch.minimum(bbx, bby)))
    d_back = d_back - bumps * torch.sin(torch.atan2(v + 0.1, ub) * 18.0)
    hair_tex = 0.95 + 0.05 * torch.sin(u * 90.0 + 6.0 * torch.sin(v * 7.0))
    over(canvas, coverage(d_back, hpx) * has_back, hair * 0.8 * hair_tex.unsqueeze(1))

    # ---- shoulders and neck (image coordinates: the body does not roll) ----
    d_shirt = sd_ellipse(X, Y - 1.38, 0.98, 0.52)
    d_neck = sd_box(X - 0.12 * sr, Y - 0.70, 0.13 * s, 0.30, 0.06)
    neck_shade = 0.72 + 0.18 * ((Y - 0.42) / 0.35).clamp(0.0, 1.0)
    over(canvas, coverage(d_neck, px), skin * neck_shade.unsqueeze(1))
    over(canvas, coverage(d_shirt, px), shirt)
    d_collar = sd_ellipse(X, Y - 0.86, 0.14 * s, 0.08)
    over(canvas, coverage(torch.maximum(d_collar, -d_shirt), px), skin * 0.82)

    # ---- ears (slightly behind the face outline: they move against the turn; windows) ----
    for side in (-1.0, 1.0):
        win = Window(canvas, geo, side * (W - 0.015) * geo.cy - 0.12 * sy, zero - 0.02, _EAR_BOX)
        patch = win.gather()
        fr = Frame(win.X, win.Y, geo)
        ue = fr.fu(side * (W - 0.015), -0.12)
        over(patch, coverage(sd_ellipse(ue, fr.v + 0.02, 0.055, 0.09), hpx), skin * 0.92)
        over(patch, coverage(sd_ellipse(ue - side * 0.01, fr.v + 0.02, 0.025, 0.05), hpx) * 0.5, skin * 0.7)
        win.scatter(patch)

    # ---- face oval with a jaw taper and edge shading ----
    uf = u - 0.06 * sy
    t = (v / H).clamp(0.0, 1.0)
    wscale = 1.0 - (0.10 + 0.32 * p["jaw"]) * t * t
    d_face = sd_ellipse(uf / wscale, v, W, H)
    k = torch.sqrt((uf / (wscale * W)) ** 2 + (v / H) ** 2)
    shade = 1.04 - 0.16 * smoothstep(0.55, 1.0, k) - 0.05 * (uf * sy / W).clamp(min=0)
    over(canvas, coverage(d_face, hpx), skin * shade.unsqueeze(1))

    # ---- beard (hair colour on the lower face, denser towards the chin) ----
    beard_a = coverage(d_face, hpx) * smoothstep(0.1, 0.34, v) * (0.85 * p["beard"])
    over(canvas, beard_a, hair * 0.85)

    # ---- cheeks (one soft blob per side, composited once) ----
    blush = None
    for side in (-1.0, 1.0):
        uc = full.fu(side * 0.24, 0.28)
        b = (1.0 - torch.sqrt(uc * uc + ((v - 0.13) / 0.7) ** 2) / 0.1).clamp(0.0, 1.0)
        blush = b if blush is None else torch.maximum(blush, b)
    over(canvas, blush * (0.6 * p["blush"]), const_color((0.95, 0.30, 0.35), n, skin))

    # ---- nose and mouth (window) ----
    win = Window(canvas, geo, zero + 0.38 * sy, zero + _MOUTH_BOX_V, _MOUTH_BOX)
    patch = win.gather()
    draw_nose_mouth(patch, Frame(win.X, win.Y, geo), p, c, hpx)
    win.scatter(patch)

    # ---- eyes and tears (windows) ----
    es = p["eye_spacing"]
    eye_windows = []
    for side in (-1.0, 1.0):
        # the window leans towards the midline so that it holds half of the glasses' bridge
        win = Window(canvas, geo, side * (es - 0.02) * geo.cy + 0.3 * sy, zero + EYE_Y + _EYE_BOX_DV, _EYE_BOX)
        patch = win.gather()
        draw_eye(patch, Frame(win.X, win.Y, geo), p, c, hpx, side)
        win.scatter(patch)
        eye_windows.append(win)

    # ---- hair in front (cap above the hairline) ----
    uh = u - 0.03 * sy
    xn = uh / W
    hl = hl_c + hl_k * xn * xn + sweep * xn + 0.01 * torch.sin(uh * 45.0)  # uneven hair tips
    dhl = (2.0 * hl_k * xn + sweep) / W
    d_line_h = (v - hl) / torch.sqrt(1.0 + dhl * dhl)
    d_capell = sd_ellipse(uh, v + 0.03, W + cap_pad, H + cap_pad + 0.03)
    d_cap = torch.maximum(d_capell, d_line_h)
    cap_tex = 0.95 + 0.05 * torch.sin(uh * 90.0 + 30.0 * (v + 0.6) * xn) - 0.08 * smoothstep(-0.06, 0.0, d_capell)
    over(canvas, coverage(d_cap, hpx) * cap_alpha, hair * cap_tex.unsqueeze(1))

    # ---- eyebrows (over the fringe, like a cartoon, so they stay visible) and glasses (windows) ----
    for side, win in zip((-1.0, 1.0), eye_windows):
        patch = win.gather()
        draw_brow_glasses(patch, Frame(win.X, win.Y, geo), p, c, hpx, side)
        win.scatter(patch)

    return (canvas * 2.0 - 1.0).clamp(-1.0, 1.0)
