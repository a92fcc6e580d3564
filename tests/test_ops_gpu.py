"""GPU tests of src.ops: the CUDA kernels against the reference (forward, gradients, double backward)."""

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import build, policy
from src.ops import upfirdn2d as ufd

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ACTS = list(ba.ACTIVATIONS)


from tests.gpu_helpers import DTYPES, strict_cuda_policy  # noqa: E402,F401  (autouse: a failed build fails)
from tests.gpu_helpers import close as _close  # noqa: E402


def test_extension_builds_and_is_used():
    x = torch.randn(2, 3, device="cuda")
    plugin = policy.resolve("auto", x)
    assert plugin is not None and plugin is build.get_plugin()
    assert policy.resolve("ref", x) is None


# ---------------------------------------------------------------------------------------------
# bias_act
# ---------------------------------------------------------------------------------------------

# kernels: (4,16,24,24), (3,5,32,48): rows shorter than a block (packed, rows and bias worked out per
# vector); (2,3,64,128): long rows (one block column per row); the others: the flat kernel
BA_SHAPES = [((4, 16, 24, 24), 1), ((8, 64), 1), ((3, 5, 7, 9), 2), ((2, 700), 0), ((5, 4, 3), -1),
             ((3, 5, 32, 48), 1), ((2, 3, 64, 128), 1)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_forward_and_grads(act, dtype, clamp):
    g = torch.Generator(device="cuda").manual_seed(0)
    for shape, dim in BA_SHAPES:
        x = (torch.randn(shape, device="cuda", generator=g) * 2).to(dtype)
        b = torch.randn(shape[dim], device="cuda", generator=g).to(dtype)
        w = torch.randn(shape, device="cuda", generator=g).to(dtype)
        if clamp is not None and dtype != torch.float32:
            # Half precision rounds act(x+b)*gain differently in the two implementations, so an
            # element within rounding of the clamp edge may be clamped in one and not the other;
            # give such elements no gradient weight (they are compared in float32 and float64).
            v = ba.bias_act(x.float(), b.float(), dim=dim, act=act, impl="ref")
            w = torch.where((v.abs() - clamp).abs() < 0.05, torch.zeros_like(w), w)
        outs = {}
        for impl in ("cuda", "ref"):
            xi = x.clone().requires_grad_()
            bi = b.clone().requires_grad_()
            y = ba.bias_act(xi, bi, dim=dim, act=act, clamp=clamp, impl=impl)
            dx, db = torch.autograd.grad((y * w).sum(), (xi, bi), create_graph=True)
            ddx = ddb = None
            if dx.requires_grad:  # the reference's dx does not depend on x for 'linear'
                ddx, ddb = torch.autograd.grad((dx.float() ** 2).sum(), (xi, bi), allow_unused=True)
            ddx = torch.zeros_like(xi) if ddx is None else ddx
            ddb = torch.zeros_like(bi) if ddb is None else ddb
            outs[impl] = (y, dx, db, ddx, ddb)
        for name, c, r in zip(("y", "dx", "db", "ddx", "ddb"), outs["cuda"], outs["ref"]):
            assert c.dtype == r.dtype and c.shape == r.shape, name
            # db / ddb are sums over many elements: scale the absolute tolerance with the count.
            scale = x.numel() / x.shape[dim] if name in ("db", "ddb") else 1.0
            if dtype != torch.float32 and name in ("ddx", "ddb"):
                scale *= 10  # products of two rounded half-precision factors
            _close(c, r, dtype, scale)


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "softplus"])
def test_bias_act_gradgradcheck_float64(act):
    x = torch.randn(2, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device="cuda", dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: ba.bias_act(x, b, act=act, clamp=1.5, impl="cuda")  # noqa: E731
    torch.testing.assert_close(fn(x, b), ba.bias_act(x, b, act=act, clamp=1.5, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


@pytest.mark.parametrize("act", ["relu", "lrelu", "elu", "selu", "softplus", "swish"])
def test_bias_act_kink_at_exact_zero_matches_reference(act):
    """z = x + b == 0 exactly (frequent in bfloat16): same one-sided derivative conventions."""
    x = torch.tensor([[-1.0, 0.0, 0.5, 0.0]], device="cuda", dtype=torch.float64).repeat(2, 1)
    b = torch.tensor([0.0, 0.0], device="cuda", dtype=torch.float64)
    x[1] = -0.25
    b[1] = 0.25
    res = {}
    for impl in ("cuda", "ref"):
        xi = x.clone().requires_grad_()
        y = ba.bias_act(xi, b, dim=0, act=act, impl=impl)
        (dx,) = torch.autograd.grad(y.sum(), xi, create_graph=True)
        (ddx,) = torch.autograd.grad(dx.sum(), xi, allow_unused=True) if dx.requires_grad else (None,)
        res[impl] = (y, dx, torch.zeros_like(x) if ddx is None else ddx)
    for c, r in zip(res["cuda"], res["ref"]):
        torch.testing.assert_close(c, r)


def test_bias_act_noncontiguous_no_bias_and_many_rows():
    x = torch.randn(2, 8, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    torch.testing.assert_close(ba.bias_act(x, act="lrelu", impl="cuda"), ba.bias_act(x, act="lrelu", impl="ref"))
    x = torch.randn(70000, 512, device="cuda")  # rows > 65535: grid-stride over rows
    b = torch.randn(70000, device="cuda")
    torch.testing.assert_close(ba.bias_act(x, b, dim=0, act="relu", impl="cuda"),
                               ba.bias_act(x, b, dim=0, act="relu", impl="ref"))


# ---------------------------------------------------------------------------------------------
# upfirdn2d
# ---------------------------------------------------------------------------------------------

UFD_CASES = [
    # (x shape, filter taps, separable, up, down, padding, flip, gain)
    ((2, 3, 16, 16), [1, 3, 3, 1], False, 2, 1, [2, 1, 2, 1], False, 4.0),
    ((2, 3, 16, 16), [1, 3, 3, 1], True, 2, 1, [2, 1, 2, 1], False, 4.0),
    ((2, 3, 17, 13), [1, 3, 3, 1], False, 1, 2, [1, 1, 1, 1], False, 1.0),
    ((1, 4, 9, 11), [1, 2, 1], False, 4, 1, [1, 2, 0, 3], True, 16.0),
    ((1, 4, 33, 31), [1, 3, 3, 1], True, 1, 4, [-1, 2, 3, -2], False, 1.0),
    ((3, 2, 20, 21), [1, 1, 2, 2, 3, 3, 4, 4], None, 1, 1, [3, 4, -2, 5], False, 2.0),
    ((2, 2, 15, 7), [[1, 2, 3], [4, 5, 6]], False, (2, 1), (1, 2), [0, 1, 2, -1], True, 1.0),
    ((1, 2, 130, 67), [1, 3, 3, 1], False, 2, 2, [1, 2, 1, 2], False, 1.0),
    ((2, 3, 5, 4), [1], False, 1, 1, [-1, -1, 0, 0], False, 1.0),
]


def _filter(taps, separable):
    return ufd.setup_filter(taps, separable=separable, normalize=True, device="cuda") if not (
        isinstance(taps[0], list)) else torch.tensor(taps, dtype=torch.float32, device="cuda") / 21


@pytest.mark.parametrize("case", range(len(UFD_CASES)))
@pytest.mark.parametrize("dtype", DTYPES)
def test_upfirdn2d_forward_and_grads(case, dtype):
    shape, taps, separable, up, down, pad, flip, gain = UFD_CASES[case]
    g = torch.Generator(device="cuda").manual_seed(case)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    f = _filter(taps, separable)
    outs = {}
    for impl in ("cuda", "ref"):
        xi = x.clone().requires_grad_()
        y = ufd.upfirdn2d(xi, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl)
        w = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(9))
        w = w.to(dtype).requires_grad_()
        (dx,) = torch.autograd.grad((y * w).sum(), xi, create_graph=True)
        # dx is linear in w: differentiate through the backward pass (double backward).
        (dw,) = torch.autograd.grad((dx.float() * x.float()).sum(), w)
        outs[impl] = (y, dx, dw)
    for name, c, r in zip(("y", "dx", "dw"), outs["cuda"], outs["ref"]):
        assert c.dtype == r.dtype and c.shape == r.shape, name
        _close(c, r, dtype, scale=4 * max(1.0, float(gain)))


# The plain 4x4 filter runs a direct kernel with two columns per lane where pairs stay aligned
# (even width and output width, aligned data; an odd left padding shifts the loads by one column)
# and one column per lane otherwise. The gradient runs it again with the mirrored padding.
DIRECT_CASES = [
    ((2, 3, 16, 16), [2, 1, 2, 1]),      # pairs; StyleGAN's filter2d padding
    ((1, 2, 9, 130), [2, 1, 1, 2]),      # pairs; width not a multiple of 64: a partly idle warp
    ((1, 2, 40, 70), [0, 4, 3, 0]),      # pairs; halo lanes at the right edge, padding only right
    ((1, 2, 21, 66), [-2, 4, -1, 2]),    # pairs; cropping on the left
    ((1, 3, 17, 13), [1, 0, 0, 1]),      # odd width: one column per lane
    ((2, 2, 33, 64), [1, 2, 2, 1]),      # odd left padding: pairs shifted by one column
    ((1, 2, 12, 130), [-1, 2, 3, 0]),    # odd cropping on the left: shifted pairs
    ((1, 2, 12, 31), [2, 1, 1, 2]),      # odd width: one column per lane
    ((1, 2, 5, 4), [2, 2, 2, 2]),        # tiny: pairs, most lanes idle
]


@pytest.mark.parametrize("case", range(len(DIRECT_CASES)))
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
def test_filter2d_direct_kernel_matches_reference(case, dtype, aligned):
    shape, pad = DIRECT_CASES[case]
    g = torch.Generator(device="cuda").manual_seed(100 + case)
    x = torch.randn(shape, device="cuda", generator=g).to(dtype)
    if not aligned:  # a contiguous view one element into its storage: the pair loads would be misaligned
        buf = torch.empty(x.numel() + 1, device="cuda", dtype=dtype)
        buf[1:] = x.flatten()
        x = buf[1:].view(shape)
        assert x.is_contiguous() and x.data_ptr() % (2 * x.element_size()) != 0
    f = ufd.setup_filter([1, 3, 3, 1], device="cuda")  # the op casts it to the kernel's arithmetic type
    outs = {}
    for impl in ("cuda", "ref"):
        xi = x.detach().clone() if impl == "ref" else x.detach()
        xi.requires_grad_()
        y = ufd.upfirdn2d(xi, f, padding=pad, impl=impl)
        w = torch.randn(y.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(7)).to(dtype)
        (dx,) = torch.autograd.grad((y * w).sum(), xi)
        outs[impl] = (y, dx)
    for c, r in zip(outs["cuda"], outs["ref"]):
        assert c.shape == r.shape
        if dtype == torch.float64:
            torch.testing.assert_close(c, r)
        else:
            _close(c, r, dtype, scale=4)


def test_upfirdn2d_gradgradcheck_float64():
    x = torch.randn(1, 2, 6, 5, device="cuda", dtype=torch.float64, requires_grad=True)
    f = torch.rand(3, 4, device="cuda", dtype=torch.float64)
    for kw in [dict(up=2, padding=[1, 2, 2, 1]), dict(down=2, padding=[2, 1, -1, 2], flip_filter=True, gain=3)]:
        fn = lambda x: ufd.upfirdn2d(x, f, impl="cuda", **kw)  # noqa: E731
        torch.testing.assert_close(fn(x), ufd.upfirdn2d(x, f, impl="ref", **kw))
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_helpers_cuda_vs_ref(dtype):
    x = torch.randn(2, 8, 17, 13, device="cuda").to(dtype).to(memory_format=torch.channels_last)
    f = ufd.setup_filter([1, 3, 3, 1], device="cuda")
    for fn, kw in [(ufd.upsample2d, dict(up=2)), (ufd.upsample2d, dict(up=4, padding=1)),
                   (ufd.downsample2d, dict(down=2)), (ufd.filter2d, dict(padding=[1, 0, 0, 1]))]:
        c = fn(x, f, impl="cuda", **kw)
        r = fn(x, f, impl="ref", **kw)
        assert c.shape == r.shape
        _close(c, r, dtype, scale=16)


def test_upfirdn2d_many_planes_and_filter_requiring_grad_uses_ref():
    x = torch.randn(1, 70000, 3, 3, device="cuda")  # N*C > 65535: grid-stride over planes
    f = ufd.setup_filter([1, 3, 3, 1], device="cuda")
    torch.testing.assert_close(ufd.upsample2d(x, f, impl="cuda"), ufd.upsample2d(x, f, impl="ref"))
    fg = f.clone().requires_grad_()
    y = ufd.filter2d(x[:, :4], fg, impl="cuda")
    (gf,) = torch.autograd.grad(y.sum(), fg)  # only the ref path gives filter gradients
    assert gf.shape == f.shape and torch.isfinite(gf).all()
