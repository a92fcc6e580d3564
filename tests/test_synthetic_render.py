"""Renderer: shapes, range, determinism, batching, and that each parameter moves the right pixels."""
from __future__ import annotations

import pytest
import torch

from src.embedded import PARAM_SPACE, PARAMS, neutral_params, render, sample_params
from src.embedded.head import EYE_Y, HEAD_UNIT, HEAD_Y
from src.utils.errors import UserError

R = 64


def _base(n: int = 1) -> torch.Tensor:
    """Neutral frontal faces without glasses/beard/fringe hiding anything."""
    p = neutral_params(sample_params(n, torch.Generator().manual_seed(7)))
    for name, value in (("glasses", 0.0), ("beard", 0.0), ("hair_style", 1.0), ("head_scale", 1.0)):
        p[:, PARAM_SPACE.idx(name)] = value
    return p


def _with(p: torch.Tensor, **values) -> torch.Tensor:
    q = p.clone()
    for k, v in values.items():
        q[:, PARAM_SPACE.idx(k)] = v
    return q


def _changed(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-3) -> torch.Tensor:
    """[R, R] bool: pixels that differ between two [1, 3, R, R] renders."""
    return (a - b).abs().amax(dim=(0, 1)) > tol


def _box_mask(cx: float, cy: float, hw: float, hh: float) -> torch.Tensor:
    """[R, R] bool: pixels whose centre lies in an image-unit box."""
    g = (torch.arange(R) + 0.5) * 2.0 / R - 1.0
    return ((g.view(1, R) - cx).abs() <= hw) & ((g.view(R, 1) - cy).abs() <= hh)


def _head_to_image(u: float, v: float, p: torch.Tensor) -> tuple[float, float]:
    s = float(p[0, PARAM_SPACE.idx("head_scale")]) * HEAD_UNIT
    return u * s, HEAD_Y + v * s


def test_shape_range_dtype_and_determinism():
    p = sample_params(5, torch.Generator().manual_seed(0))
    img = render(p, 48)
    assert img.shape == (5, 3, 48, 48) and img.dtype == torch.float32
    assert img.min() >= -1.0 and img.max() <= 1.0 and img.std() > 0.1
    assert torch.equal(img, render(p, 48))
    assert torch.equal(p, sample_params(5, torch.Generator().manual_seed(0)))
    assert not torch.equal(p, sample_params(5, torch.Generator().manual_seed(1)))


def test_sampled_params_in_range_and_varied():
    p = sample_params(400, torch.Generator().manual_seed(3))
    assert p.shape == (400, len(PARAMS))
    assert (p >= PARAM_SPACE.low()).all() and (p <= PARAM_SPACE.high()).all()
    style = p[:, PARAM_SPACE.idx("hair_style")]
    assert torch.equal(style, style.round()) and len(style.unique()) == PARAMS[PARAM_SPACE.idx("hair_style")].classes
    for s in PARAMS:  # broad coverage: every parameter visits most of its range
        col = PARAM_SPACE.normalize(p)[:, PARAM_SPACE.idx(s.name)]
        assert col.max() - col.min() > 0.7, s.name


def test_batch_equals_single():
    p = sample_params(4, torch.Generator().manual_seed(2))
    batch = render(p, R)
    for i in range(4):
        torch.testing.assert_close(render(p[i:i + 1], R)[0], batch[i], atol=1e-5, rtol=0)
    # chunking must not change the result either
    torch.testing.assert_close(render(p, R, max_pixels_per_chunk=R * R), batch, atol=1e-5, rtol=0)


def test_bad_input_raises_user_error():
    with pytest.raises(UserError):
        render(torch.zeros(2, 3), R)
    with pytest.raises(UserError):
        render(sample_params(1), 8)
    bad = sample_params(1)
    bad[0, 0] = float("nan")
    with pytest.raises(UserError):
        render(bad, R)


def test_closing_left_eye_changes_only_left_eye_box():
    p = _base()
    a, b = render(p, R), render(_with(p, eye_open_l=0.0), R)
    es = float(p[0, PARAM_SPACE.idx("eye_spacing")])
    lx, ly = _head_to_image(-es, EYE_Y, p)
    rx_, _ = _head_to_image(es, EYE_Y, p)
    ch = _changed(a, b)
    left = _box_mask(lx, ly, 0.16, 0.12)
    assert ch.sum() > 10
    assert not (ch & ~left).any(), "pixels outside the left-eye box changed"
    assert not (ch & _box_mask(rx_, ly, 0.16, 0.12)).any()


def test_right_eye_and_gaze_change_only_eye_boxes():
    p = _base()
    es = float(p[0, PARAM_SPACE.idx("eye_spacing")])
    lx, ly = _head_to_image(-es, EYE_Y, p)
    rx_, _ = _head_to_image(es, EYE_Y, p)
    eyes = _box_mask(lx, ly, 0.16, 0.12) | _box_mask(rx_, ly, 0.16, 0.12)
    ch = _changed(render(p, R), render(_with(p, eye_open_r=0.0), R))
    assert ch.sum() > 10 and not (ch & ~_box_mask(rx_, ly, 0.16, 0.12)).any()
    for name, value in (("gaze_x", 1.0), ("gaze_y", -1.0)):
        ch = _changed(render(p, R), render(_with(p, **{name: value}), R))
        assert ch.sum() > 4 and not (ch & ~eyes).any(), name


@pytest.mark.parametrize("name,value", [("mouth_open", 1.0), ("smile", 1.0), ("smile", -1.0), ("pout", 1.0),
                                        ("smirk", 1.0), ("tongue", 1.0)])
def test_mouth_params_change_only_mouth_box(name, value):
    p = _base()
    mx, my = _head_to_image(0.0, 0.36, p)
    ch = _changed(render(p, R), render(_with(p, **{name: value}), R))
    assert ch.sum() > 8
    assert not (ch & ~_box_mask(mx, my, 0.3, 0.22)).any()


def test_brows_move_above_the_eyes():
    p = _base()
    _, ly = _head_to_image(0.0, EYE_Y, p)
    for name, value in (("brow_raise", 1.0), ("brow_angle", 1.0), ("brow_asym", 1.0)):
        ch = _changed(render(p, R), render(_with(p, **{name: value}), R))
        assert ch.sum() > 8, name
        rows = ch.any(dim=1).nonzero().flatten().float()
        row_y = (rows + 0.5) * 2.0 / R - 1.0
        assert (row_y < ly).all(), f"{name} changed pixels below the eye line"


def test_every_parameter_changes_the_image():
    p = _base()
    ref = render(p, R)
    for s in PARAMS:
        top = (s.low + s.high) / 2 if s.name.endswith("_hue") else s.high  # hue is circular
        lo, hi = _with(p, **{s.name: s.low}), _with(p, **{s.name: top})
        if s.name == "glasses_color":
            lo, hi = _with(lo, glasses=1.0), _with(hi, glasses=1.0)
        if s.name == "tears":
            lo = p
        diff = (render(lo, R) - render(hi, R)).abs().amax()
        assert diff > 0.05, f"{s.name} does not change the image"
    assert ref.shape == (1, 3, R, R)


def test_pose_moves_the_whole_head():
    p = _base()
    for name in ("yaw", "roll"):
        ch = _changed(render(p, R), render(_with(p, **{name: 1.0}), R))
        assert ch.float().mean() > 0.1, name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_cuda_agree():
    p = sample_params(16, torch.Generator().manual_seed(4))
    cpu = render(p, 128)
    gpu = render(p.cuda(), 128).cpu()
    assert (cpu - gpu).abs().mean() < 1e-4
    assert (cpu - gpu).abs().max() < 0.05  # a rare pixel may sit exactly on an edge
