"""src.ops.resize: the matrix form equals F.interpolate (values and gradients), and it is what runs
under deterministic algorithms on a GPU (whose F.interpolate backward would raise)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.ops.resize import resize, resize_matrix

SHAPES = [(128, 128, 224, 224), (256, 256, 224, 224), (64, 80, 33, 47), (7, 5, 16, 3), (2, 2, 1, 1), (3, 9, 3, 9)]


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_matrix_form_equals_interpolate(mode, antialias, shape):
    hi, wi, ho, wo = shape
    g = torch.Generator().manual_seed(hi * 1000 + wo)
    x = torch.randn(2, 3, hi, wi, dtype=torch.float64, generator=g, requires_grad=True)
    ref = F.interpolate(x, size=(ho, wo), mode=mode, align_corners=False, antialias=antialias)
    out = resize(x, (ho, wo), mode=mode, antialias=antialias, deterministic=True)
    assert out.shape == ref.shape == (2, 3, ho, wo)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    grad_out = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    (g_ref,) = torch.autograd.grad(ref, x, grad_out)
    (g_out,) = torch.autograd.grad(out, x, grad_out)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(188, 188, 112, 112), (10, 7, 3, 5), (4, 4, 4, 4)])
def test_area_is_adaptive_average_pooling(shape):
    hi, wi, ho, wo = shape
    x = torch.randn(2, 3, hi, wi, dtype=torch.float64, requires_grad=True)
    ref = F.adaptive_avg_pool2d(x, (ho, wo))
    out = resize(x, (ho, wo), mode="area", deterministic=True)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g_out, g_ref, rtol=0, atol=1e-12)
    assert torch.equal(resize(x, (ho, wo), mode="area", deterministic=False), ref)


def test_float32_stays_float32_and_is_as_accurate_as_interpolate():
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    out = resize(x, (224, 224), "bicubic", True, deterministic=True)
    assert out.dtype == torch.float32
    exact = F.interpolate(x.double(), size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    ref = F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False, antialias=True)
    # F.interpolate's own float32 kernel is off by up to ~1e-4 here; the matrix form must not be worse
    assert (out.double() - exact).abs().max() <= (ref.double() - exact).abs().max() + 1e-6


def test_default_choice_is_interpolate_off_gpu():
    # on CPU, even with deterministic algorithms on, F.interpolate is used (its CPU backward is deterministic)
    x = torch.randn(1, 3, 16, 16)
    torch.use_deterministic_algorithms(True)
    try:
        out = resize(x, (8, 8), "bilinear", True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(out, F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True))


def test_matrices_are_cached_and_rows_sum_to_one():
    a = resize_matrix(100, 37, "bicubic", True)
    assert resize_matrix(100, 37, "bicubic", True) is a
    assert a.shape == (37, 100)
    torch.testing.assert_close(a.sum(1), torch.ones(37, dtype=torch.float64))


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        resize_matrix(4, 2, "nearest", False)
    with pytest.raises(ValueError, match="antialias"):
        resize_matrix(4, 2, "area", True)
    with pytest.raises(ValueError, match=r"\[N,C,H,W\]"):
        resize(torch.zeros(3, 4, 4), (2, 2), deterministic=True)
