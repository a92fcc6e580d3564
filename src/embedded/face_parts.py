"""The detailed face parts of the renderer, each drawn in place into a pixel window.

Nose and mouth, one eye with its tears, one eyebrow with one glasses rim: ``canvas`` is a
[N, 3, h, w] window gathered from the image, ``fr`` its head coordinates, ``p`` the parameters
by name ([N, 1, 1] each), ``c`` the colours by name ([N, 3, 1, 1] each), ``hpx`` the pixel size
in head units.
"""
from __future__ import annotations

import torch

from src.embedded.head import EYE_Y, Frame
from src.embedded.shapes import const_color, coverage, over, sd_box, sd_ellipse, sd_segment


def draw_nose_mouth(canvas: torch.Tensor, fr: Frame, p: dict, c: dict, hpx: torch.Tensor) -> None:
    """Nose and mouth into canvas [N, 3, h, w] (in place)."""
    n, v, skin, lips = canvas.shape[0], fr.v, c["skin"], c["lips"]
    ns = p["nose_size"]
    un = fr.fu(0.0, 0.45)
    over(canvas, coverage(sd_ellipse(un, v - 0.13 * ns, 0.05 * ns, 0.026 * ns), hpx) * 0.18, skin * 0.6)
    over(canvas, coverage(sd_segment(un, v, -0.03 * ns, -0.02, -0.042 * ns, 0.095 * ns, 0.005), hpx) * 0.3, skin * 0.6)
    d_nos = torch.minimum(sd_ellipse(un + 0.027 * ns, v - 0.135 * ns, 0.013 * ns, 0.008 * ns),
                          sd_ellipse(un - 0.027 * ns, v - 0.135 * ns, 0.013 * ns, 0.008 * ns))
    over(canvas, coverage(d_nos, hpx) * 0.85, skin * 0.45)
    over(canvas, coverage(sd_ellipse(un, v - 0.095 * ns, 0.012 * ns, 0.02 * ns), hpx) * 0.25, c["white"])

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
    over(canvas, coverage(d_ll, hpx), lips * 1.05)
    d_in = torch.maximum(torch.maximum(upper - vm, vm - lower), side_d)
    over(canvas, coverage(d_in, hpx), const_color((0.22, 0.05, 0.07), n, skin))
    over(canvas, coverage(torch.maximum(d_in, vm - upper - 0.03 * sa), hpx), const_color((0.97, 0.96, 0.92), n, skin))
    tongue_in = coverage(torch.maximum(d_in, sd_ellipse(um, vm - lower, 0.6 * mw, 0.045)), hpx)
    over(canvas, tongue_in, const_color((0.80, 0.35, 0.40), n, skin))
    d_line = torch.maximum((vm - centre).abs() - 0.004, side_d)
    over(canvas, coverage(d_line, hpx) * 0.9, lips * 0.45)
    tg = p["tongue"]
    tg_a = (tg * 5.0).clamp(max=1.0)
    d_tongue = sd_ellipse(um, vm - centre - 0.01 - 0.045 * tg, 0.048, 0.012 + 0.042 * tg)
    d_tongue = torch.maximum(d_tongue, centre - vm)
    over(canvas, coverage(d_tongue, hpx) * tg_a, const_color((0.90, 0.40, 0.47), n, skin))
    d_tline = sd_segment(um, vm - centre, 0.0, 0.0, 0.0, 0.02 + 0.06 * tg, 0.003)
    over(canvas, coverage(torch.maximum(d_tline, d_tongue), hpx) * tg_a * 0.5, const_color((0.6, 0.2, 0.25), n, skin))
    d_ul = torch.maximum(torch.maximum(upper - tu - vm, vm - upper), side_d - 0.004)
    over(canvas, coverage(d_ul, hpx), lips)


def draw_eye(canvas: torch.Tensor, fr: Frame, p: dict, c: dict, hpx: torch.Tensor, side: float) -> None:
    """One eye (side -1 = image left) with its tears into canvas [N, 3, h, w] (in place)."""
    n, skin = canvas.shape[0], c["skin"]
    es, esz = p["eye_spacing"], p["eye_size"]
    o = p["eye_open_l" if side < 0 else "eye_open_r"]
    rx = 0.078 * esz
    ue = fr.fu(side * es, 0.3)
    ve = fr.v - EYE_Y
    te = ue / rx
    ae = (1.0 - te * te).clamp(min=0.0)
    cu = (0.008 - 0.075 * o) * esz  # upper lid height at the centre (negative = up)
    cl = (0.008 + 0.026 * o) * esz  # lower lid
    up_l, lo_l = cu * ae, cl * ae
    gu = torch.sqrt(1.0 + (2.0 * cu * te / rx) ** 2)
    gl = torch.sqrt(1.0 + (2.0 * cl * te / rx) ** 2)
    sdx = ue.abs() - rx
    ap = coverage(torch.maximum(torch.maximum((up_l - ve) / gu, (ve - lo_l) / gl), sdx), hpx)
    over(canvas, ap, const_color((0.97, 0.97, 0.95), n, skin))
    iu = ue - p["gaze_x"] * 0.045 * esz
    iv = ve - (p["gaze_y"] * 0.024 * esz - 0.004)
    ri = 0.036 * esz
    d_iris = sd_ellipse(iu, iv, ri, ri)
    ring = 0.7 + 0.45 * (-d_iris / ri).clamp(0.0, 1.0)
    over(canvas, ap * coverage(d_iris, hpx), c["iris"] * ring.unsqueeze(1))
    d_pupil = sd_ellipse(iu, iv, 0.016 * esz, 0.016 * esz)
    over(canvas, ap * coverage(d_pupil, hpx), const_color((0.03, 0.02, 0.02), n, skin))
    d_hl = sd_ellipse(iu - 0.012 * esz, iv + 0.012 * esz, 0.008 * esz, 0.008 * esz)
    over(canvas, ap * coverage(d_hl, hpx) * 0.9, c["white"])
    # upper lid line with lashes, lower lid, and a faint crease above
    over(canvas, coverage(torch.maximum((ve - up_l).abs() / gu - 0.0065 * esz, sdx - 0.006), hpx), c["dark"])
    over(canvas, coverage(torch.maximum((ve - lo_l).abs() / gl - 0.002, sdx + 0.01), hpx) * 0.35, c["dark"])
    d_crease = torch.maximum((ve - up_l + 0.024 * ae + 0.006).abs() - 0.003, sdx + 0.012)
    over(canvas, coverage(d_crease, hpx) * 0.25 * (o * 2.0).clamp(max=1.0), skin * 0.55)
    # tears: a streak and a drop under the eye
    tr = p["tears"]
    d_streak = sd_segment(ue, ve, side * 0.02, 0.04, side * 0.025, 0.05 + 0.2 * tr, 0.008)
    d_drop = sd_ellipse(ue - side * 0.025, ve - 0.06 - 0.2 * tr, 0.014, 0.02)
    tear_a = (tr * 3.0).clamp(max=1.0) * 0.85
    over(canvas, coverage(torch.minimum(d_streak, d_drop), hpx) * tear_a, const_color((0.55, 0.78, 1.0), n, skin))
    over(canvas, coverage(sd_ellipse(ue - side * 0.028, ve - 0.055 - 0.2 * tr, 0.004, 0.006), hpx) * tear_a, c["white"])


def draw_brow_glasses(canvas: torch.Tensor, fr: Frame, p: dict, c: dict, hpx: torch.Tensor, side: float) -> None:
    """One eyebrow and one glasses rim into canvas [N, 3, h, w] (in place)."""
    n = canvas.shape[0]
    es, esz, raise_ = p["eye_spacing"], p["eye_size"], p["brow_raise"]
    ub = fr.fu(side * (es + 0.005), 0.3)
    lift = 0.045 * raise_ + 0.055 * (side * p["brow_asym"]).clamp(min=0) - 0.015 * (-side * p["brow_asym"]).clamp(min=0)
    vb = fr.v - (EYE_Y - 0.105 * esz - lift)
    L = 0.082 * esz
    slope = -side * 0.45 * p["brow_angle"]      # angry: the inner end goes down
    arch = 2.2 + 2.0 * raise_.clamp(min=0)
    yc = slope * ub + arch * ub * ub
    thick = 0.0145 * p["brow_thickness"] * (1.0 + 0.35 * (-side * ub / L)).clamp(0.4, 1.5)
    d_brow = sd_ellipse(ub, (vb - yc) / torch.sqrt(1.0 + (slope + 2 * arch * ub) ** 2), L, thick)
    over(canvas, coverage(d_brow, hpx), c["brow"])
    on = (p["glasses"] >= 0.5).float()
    bx, by = 0.098 * esz + 0.005, 0.066
    ug = fr.fu(side * es, 0.33)
    d_frame = sd_box(ug, fr.v - (EYE_Y + 0.008), bx, by, 0.035)
    over(canvas, coverage(d_frame, hpx) * on * 0.12, const_color((0.85, 0.92, 1.0), n, canvas))
    # rim, half of the bridge (to the midline of the two rims) and a stub of the temple
    d = d_frame.abs() - 0.008
    d_bridge = sd_segment(ug, fr.v, -side * bx, EYE_Y - 0.02, -side * es, EYE_Y - 0.02, 0.007)
    d_temple = sd_segment(ug, fr.v, side * bx, EYE_Y - 0.03, side * (bx + 0.05), EYE_Y - 0.04, 0.006)
    d = torch.minimum(d, torch.minimum(d_bridge, d_temple))
    over(canvas, coverage(d, hpx) * on, c["frame"])
