"""CPU tests of src.ops: reference maths, autograd (incl. double backward), helpers (the policy and the
build: tests/test_ops_policy.py)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.ops import bias_act as ba
from src.ops import policy
from src.ops import upfirdn2d as ufd
from src.utils.errors import UserError

ACTS = list(ba.ACTIVATIONS)


@pytest.fixture(autouse=True)
def _fresh_policy(monkeypatch, tmp_path):
    monkeypatch.delenv("LGFA_OPS_IMPL", raising=False)
    monkeypatch.delenv("LGFA_OPS_ON_BUILD_FAILURE", raising=False)
    monkeypatch.delenv("LGFA_OPS_LOCK_TIMEOUT", raising=False)
    monkeypatch.setenv("LGFA_CACHE_DIR", str(tmp_path / "cache"))
    policy.reset()
    yield
    policy.reset()


# ---------------------------------------------------------------------------------------------
# bias_act (reference)
# ---------------------------------------------------------------------------------------------

def _expected_act(z, act, alpha):
    """Independent formulas (torch.nn.functional / closed forms)."""
    return {
        "linear": lambda: z,
        "relu": lambda: torch.clamp(z, min=0),
        "lrelu": lambda: torch.where(z > 0, z, z * alpha),
        "tanh": lambda: torch.tanh(z),
        "sigmoid": lambda: 1 / (1 + torch.exp(-z)),
        "elu": lambda: torch.where(z > 0, z, torch.exp(z) - 1),
        "selu": lambda: F.selu(z),
        "softplus": lambda: torch.log1p(torch.exp(z)),
        "swish": lambda: z / (1 + torch.exp(-z)),
    }[act]()


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_matches_formulas(act):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 2, generator=g, dtype=torch.float64) * 3
    b = torch.randn(5, generator=g, dtype=torch.float64)
    y = ba.bias_act(x, b, act=act)
    z = x + b[None, :, None, None]
    default_gain = math.sqrt(2) if act in ("relu", "lrelu", "swish") else 1.0
    torch.testing.assert_close(y, _expected_act(z, act, 0.2) * default_gain)
    # explicit alpha/gain, bias along another dim, clamp
    b2 = torch.randn(4, generator=g, dtype=torch.float64)
    y2 = ba.bias_act(x, b2, dim=2, act=act, alpha=0.1, gain=2.5, clamp=1.5)
    z2 = x + b2[None, None, :, None]
    torch.testing.assert_close(y2, (_expected_act(z2, act, 0.1) * 2.5).clamp(-1.5, 1.5))
    assert y2.abs().max() <= 1.5


def test_bias_act_defaults_and_special_cases():
    x = torch.tensor([[-2.0, 0.5], [3.0, -0.25]])
    torch.testing.assert_close(ba.bias_act(x), x)  # linear, no bias
    torch.testing.assert_close(ba.bias_act(x, act="lrelu", gain=1),
                               torch.tensor([[-0.4, 0.5], [3.0, -0.05]]))
    torch.testing.assert_close(ba.bias_act(x, clamp=-1), x)  # negative clamp disables clamping
    torch.testing.assert_close(ba.bias_act(x, clamp=0), torch.zeros_like(x))
    b = torch.tensor([1.0, -1.0])
    torch.testing.assert_close(ba.bias_act(x, b, dim=-1), x + b)  # negative dim, [N, C] input
    assert ba.bias_act(x.half(), b, act="lrelu").dtype == torch.float16


def test_bias_act_bad_inputs():
    x = torch.randn(2, 3, 4)
    with pytest.raises(UserError, match="shape \\[3\\]"):
        ba.bias_act(x, torch.zeros(4))
    with pytest.raises(UserError, match="unknown activation"):
        ba.bias_act(x, act="gelu")
    with pytest.raises(UserError, match="out of range"):
        ba.bias_act(x, dim=3)
    with pytest.raises(UserError, match="floating-point"):
        ba.bias_act(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(UserError, match="impl"):
        ba.bias_act(x, impl="triton")


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_ref_gradgradcheck(act):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(2, 3, 2, generator=g, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    fn = lambda x, b: ba.bias_act(x, b, act=act, clamp=2.0, impl="ref")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---------------------------------------------------------------------------------------------
# The CUDA autograd wiring, run on CPU with a fake plugin that follows the kernel's contract
# (derivatives taken by autograd of the reference activation, i.e. independently of the kernel).
# ---------------------------------------------------------------------------------------------

class _FakePlugin:
    def __init__(self):
        self.calls = []

    def bias_act(self, x, b, g, dim, act_idx, order, alpha, gain, clamp):
        self.calls.append(order)
        act = next(k for k, v in ba.ACTIVATIONS.items() if v.cuda_idx == act_idx)
        shape = [1] * x.ndim
        shape[dim] = -1
        z = (x + b.reshape(shape) if b.numel() else x).detach().requires_grad_()
        with torch.enable_grad():
            v = ba._act_ref(z, act, alpha)
            (d1,) = torch.autograd.grad(v.sum(), z, create_graph=True)
            d2 = torch.autograd.grad(d1.sum(), z, allow_unused=True)[0] if d1.requires_grad else None
        v, d1 = v.detach(), d1.detach()
        d2 = torch.zeros_like(v) if d2 is None else d2
        out = v * gain
        if order == 0:
            return out.clamp(-clamp, clamp) if clamp >= 0 else out
        mask = (out.abs() <= clamp) if clamp >= 0 else torch.ones_like(out, dtype=torch.bool)
        return torch.where(mask, g * (d1 if order == 1 else d2) * gain, torch.zeros_like(out))

    def upfirdn2d(self, x, f, upx, upy, downx, downy, px0, px1, py0, py1):
        # f is the correlation filter, so the ref with flip_filter=True computes the same.
        return ufd._upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, True, 1.0)


@pytest.mark.parametrize("act", ACTS)
def test_bias_act_cuda_function_wiring_double_backward(act):
    plugin = _FakePlugin()
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(2, 3, 4, generator=g, dtype=torch.float64) * 2).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    spec = ba.ACTIVATIONS[act]
    fn = lambda x, b: ba._bias_act_cuda(plugin, x, b, 1, spec, 0.2, spec.def_gain, 2.0)  # noqa: E731
    ref = lambda x, b: ba.bias_act(x, b, act=act, clamp=2.0, impl="ref")  # noqa: E731
    torch.testing.assert_close(fn(x, b), ref(x, b))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))
    # R1-style penalty gradient identical to the reference
    gx, gb = torch.autograd.grad(fn(x, b).square().sum(), (x, b), create_graph=True)
    rx, rb = torch.autograd.grad(ref(x, b).square().sum(), (x, b), create_graph=True)
    torch.testing.assert_close((gx, gb), (rx, rb))
    torch.testing.assert_close(torch.autograd.grad(gx.square().sum(), (x, b)),
                               torch.autograd.grad(rx.square().sum(), (x, b)))
    assert (2 in plugin.calls) == spec.has_2nd_grad


def test_upfirdn2d_cuda_function_wiring_double_backward():
    plugin = _FakePlugin()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 1, 5, 4, generator=g, dtype=torch.float64).requires_grad_()
    for f, up, down, pad, flip in [(torch.rand(4, generator=g, dtype=torch.float64), 2, 1, [2, 1, 1, 2], False),
                                   (torch.rand(3, 4, generator=g, dtype=torch.float64), 1, 2, [1, -1, 2, 0], True),
                                   (torch.rand(2, 3, generator=g, dtype=torch.float64), (2, 3), (3, 2), 1, False)]:
        upx, upy = ufd._parse_scaling(up, "up")
        dnx, dny = ufd._parse_scaling(down, "down")
        p = ufd._Params(plugin, upx, upy, dnx, dny, *ufd._parse_padding(pad), flip, 1.7)
        fn = lambda x: ufd._UpFirDn2dCuda.apply(x, f, p)  # noqa: E731
        ref = lambda x: ufd.upfirdn2d(x, f, up, down, pad, flip, 1.7, impl="ref")  # noqa: E731
        torch.testing.assert_close(fn(x), ref(x))
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------------------------------------
# upfirdn2d (reference)
# ---------------------------------------------------------------------------------------------

def _naive_upfirdn2d(x, f, up, down, pad, flip_filter, gain):
    """Loops straight from the definition: valid TRUE convolution of the zero-inserted, padded
    signal with the (outer-product for 1D) filter, then decimation."""
    x = x.numpy()
    f = f.numpy().astype(np.float64)
    if f.ndim == 1:
        f = np.outer(f, f) * gain
    else:
        f = f * gain
    if flip_filter:
        f = f[::-1, ::-1]
    upx, upy = up
    dnx, dny = down
    px0, px1, py0, py1 = pad
    n, c, h, w = x.shape
    fh, fw = f.shape
    hp, wp = h * upy + py0 + py1, w * upx + px0 + px1
    oh, ow = (hp - fh) // dny + 1, (wp - fw) // dnx + 1

    def sample(nn, cc, v, u):  # value of the padded, upsampled image at row v, column u
        vy, ux = v - py0, u - px0
        if vy < 0 or ux < 0 or vy % upy or ux % upx:
            return 0.0
        iy, ix = vy // upy, ux // upx
        return float(x[nn, cc, iy, ix]) if iy < h and ix < w else 0.0

    out = np.zeros((n, c, oh, ow))
    for nn, cc, oy, ox in itertools.product(range(n), range(c), range(oh), range(ow)):
        # true convolution: output sample at s (valid range) = sum_k in[s - k] f[k], s = start + fh - 1
        sy, sx = oy * dny + fh - 1, ox * dnx + fw - 1
        out[nn, cc, oy, ox] = sum(sample(nn, cc, sy - ky, sx - kx) * f[ky, kx]
                                  for ky in range(fh) for kx in range(fw))
    return torch.from_numpy(out)


_UFD_CASES = [
    # (filter shape, up, down, padding, flip, gain)
    ((4,), (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
    ((4, 4), (1, 1), (2, 2), (1, 1, 1, 1), False, 1.0),
    ((3, 4), (1, 1), (1, 1), (0, 0, 0, 0), True, 1.0),
    ((3, 2), (3, 2), (2, 3), (-1, 2, 3, -2), False, 2.0),
    ((5,), (1, 1), (4, 4), (-1, 3, 1, 3), True, 0.5),
    ((2, 3), (4, 4), (1, 1), (1, 2, 3, 0), False, 1.0),
    ((1, 1), (2, 1), (1, 2), (0, 0, 0, 0), False, 3.0),
]


@pytest.mark.parametrize("fshape,up,down,pad,flip,gain", _UFD_CASES)
def test_upfirdn2d_matches_naive_loops(fshape, up, down, pad, flip, gain):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64)
    f = torch.rand(fshape, generator=g, dtype=torch.float64) + 0.1
    y = ufd.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    torch.testing.assert_close(y, _naive_upfirdn2d(x, f, up, down, pad, flip, gain))


def test_upfirdn2d_separable_equals_outer_product_and_f_none():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 7, 6, generator=g)
    f1 = ufd.setup_filter([1, 3, 3, 1], separable=True)
    f2 = ufd.setup_filter([1, 3, 3, 1])
    assert f1.shape == (4,) and f2.shape == (4, 4)
    for kw in [dict(up=2, padding=[2, 1, 2, 1], gain=4), dict(down=2, padding=1), dict(padding=[-1, 2, 0, 1])]:
        torch.testing.assert_close(ufd.upfirdn2d(x, f1, **kw), ufd.upfirdn2d(x, f2, **kw), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ufd.upfirdn2d(x, None), x)
    torch.testing.assert_close(ufd.upfirdn2d(x, None, down=2), x[:, :, ::2, ::2])
    torch.testing.assert_close(ufd.upfirdn2d(x, None, padding=-1), x[:, :, 1:-1, 1:-1])


def test_upfirdn2d_ref_gradgradcheck():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64).requires_grad_()
    f = torch.rand(3, 4, generator=g, dtype=torch.float64)
    for kw in [dict(up=2, padding=[1, 2, 2, 1]), dict(down=2, padding=[2, 1, -1, 2], flip_filter=True)]:
        fn = lambda x: ufd.upfirdn2d(x, f, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("fshape,up,down,pad,flip,gain", _UFD_CASES)
def test_upfirdn2d_backward_is_upfirdn2d_with_grad_params(fshape, up, down, pad, flip, gain):
    """The CUDA Function's backward formula (flipped filter, swapped factors, derived padding)
    equals the autograd VJP of the reference."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64).requires_grad_()
    f = torch.rand(fshape, generator=g, dtype=torch.float64) + 0.1
    y = ufd.upfirdn2d(x, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (dx_auto,) = torch.autograd.grad(y, x, dy)
    fw, fh = ufd._get_filter_size(f)
    p = ufd._Params(None, *up, *down, *pad, flip, gain)
    gp = ufd._grad_params(p, 5, 4, y.shape[2], y.shape[3], fw, fh)
    dx = ufd.upfirdn2d(dy, f, up=(gp.upx, gp.upy), down=(gp.downx, gp.downy),
                       padding=(gp.px0, gp.px1, gp.py0, gp.py1), flip_filter=gp.flip, gain=gp.gain)
    torch.testing.assert_close(dx, dx_auto)


def test_setup_filter():
    f = ufd.setup_filter([1, 3, 3, 1])
    torch.testing.assert_close(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    assert f.dtype == torch.float32
    assert ufd.setup_filter(list(range(1, 9))).shape == (8,)  # >= 8 taps: separable by default
    assert ufd.setup_filter(list(range(1, 9)), separable=False).shape == (8, 8)
    torch.testing.assert_close(ufd.setup_filter(None), torch.ones(1, 1))
    torch.testing.assert_close(ufd.setup_filter([1, 2], normalize=False, separable=True, gain=4),
                               torch.tensor([2.0, 4.0]))  # 1D: gain ** (1/2)
    torch.testing.assert_close(ufd.setup_filter([[1, 2], [3, 4]], normalize=False, flip_filter=True, gain=2),
                               torch.tensor([[8.0, 6.0], [4.0, 2.0]]))
    with pytest.raises(UserError):
        ufd.setup_filter([[1, 2]], separable=True)
    with pytest.raises(UserError, match="sum to 0"):
        ufd.setup_filter([1, -1])


@pytest.mark.parametrize("h,w", [(8, 8), (7, 5), (1, 3)])
@pytest.mark.parametrize("factor", [2, 4, (2, 1)])
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1], [1, 1, 2, 2, 3, 3, 4, 4]])
def test_helpers_output_sizes_and_dc_gain(h, w, factor, taps):
    f = ufd.setup_filter(taps)
    fx, fy = ufd._parse_scaling(factor, "f")
    x = torch.ones(1, 2, h, w, dtype=torch.float64)
    up = ufd.upsample2d(x, f, up=factor)
    assert up.shape == (1, 2, h * fy, w * fx)
    fs = f.shape[0]
    inner = up[:, :, fs:-fs, fs:-fs]  # away from the zero-padded borders a constant stays constant
    if inner.numel() and fx == 2 and fy in (1, 2) and len(taps) > 1:  # (these filters split evenly in 2 phases)
        torch.testing.assert_close(inner, torch.ones_like(inner))
    assert ufd.filter2d(x, f).shape == x.shape
    assert ufd.filter2d(x, f, padding=[1, 0, 2, 1]).shape == (1, 2, h + 3, w + 1)
    if h >= fy and w >= fx:
        dn = ufd.downsample2d(x, f, down=factor)
        assert dn.shape == (1, 2, h // fy, w // fx)
    assert ufd.upsample2d(x, f, up=factor, padding=1).shape == (1, 2, h * fy + 2, w * fx + 2)


def test_upfirdn2d_bad_inputs():
    x = torch.randn(1, 2, 4, 4)
    f = ufd.setup_filter([1, 3, 3, 1])
    with pytest.raises(UserError, match="4D"):
        ufd.upfirdn2d(x[0], f)
    with pytest.raises(UserError, match="padding"):
        ufd.upfirdn2d(x, f, padding=[1, 2, 3])
    with pytest.raises(UserError, match=">= 1"):
        ufd.upfirdn2d(x, f, up=0)
    with pytest.raises(UserError, match="smaller than the filter"):
        ufd.upfirdn2d(x, f, padding=-2)
    with pytest.raises(UserError, match="1D or 2D"):
        ufd.upfirdn2d(x, torch.ones(2, 2, 2))
