"""GPU tests of channels-last (NHWC) inputs to the CUDA ops and of fp16_channels_last networks.

The kernels read a channels-last x in place (upfirdn2d_nhwc.cu, bias_act_nhwc.cu): each result,
gradient and double-backward term must equal the one computed from the same values stored NCHW,
and keep the channels-last format.
"""

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import upfirdn2d as ufd
from src.stylegan import Discriminator, Generator
from tests.gpu_helpers import DTYPES, no_tf32, strict_cuda_policy  # noqa: F401  (autouse: a failed build fails)
from tests.gpu_helpers import close as _close

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CL = torch.channels_last


def _is_cl(t):
    return t.is_contiguous(memory_format=CL)


# ---------------------------------------------------------------------------------------------
# upfirdn2d
# ---------------------------------------------------------------------------------------------

UFD_CASES = [
    # (x shape, taps, up, down, padding, flip, gain): the networks' calls first
    ((4, 64, 33, 33), [1, 3, 3, 1], 1, 1, [1, 1, 1, 1], False, 4.0),   # G conv0 after the transposed conv
    ((4, 64, 16, 16), [1, 3, 3, 1], 1, 1, [2, 2, 2, 2], False, 1.0),   # D conv1 before the strided conv
    ((4, 64, 16, 16), [1, 3, 3, 1], 1, 2, [1, 1, 1, 1], False, 1.0),   # D resnet skip (1x1, down 2)
    ((4, 32, 16, 16), [1, 3, 3, 1], 2, 1, [2, 1, 2, 1], False, 4.0),   # upsample2d
    ((3, 128, 9, 9), [1, 3, 3, 1], 1, 1, [2, 1, 2, 1], False, 1.0),    # filter2d, odd size
    ((2, 24, 17, 13), [1, 3, 3, 1], 1, 1, [-1, 2, 3, 0], True, 1.0),   # cropping
    ((2, 3, 16, 16), [1, 3, 3, 1], 1, 2, [1, 1, 1, 1], False, 1.0),    # C % 8 != 0: one channel a thread
    ((2, 13, 15, 7), [1, 3, 3, 1], 1, 1, [2, 1, 2, 1], False, 1.0),    # odd C, plain filter
    ((1, 16, 9, 11), [1, 2, 1], 4, 1, [1, 2, 0, 3], True, 16.0),      # generic kernel
    ((2, 8, 20, 21), [1, 1, 2, 2, 3, 3, 4, 4], 1, 1, [3, 4, -2, 5], False, 2.0),  # separable 8 taps
    ((2, 16, 15, 7), [[1, 2, 3], [4, 5, 6]], (2, 1), (1, 2), [0, 1, 2, -1], True, 1.0),
]


def _filter(taps):
    if isinstance(taps[0], list):
        return torch.tensor(taps, dtype=torch.float32, device="cuda") / 21
    return ufd.setup_filter(taps, device="cuda")


def _ufd_run(x, f, case, impl, w):
    _, _, up, down, pad, flip, gain = case
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    wi = w.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    y = ufd.upfirdn2d(xi, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl=impl)
    (dx,) = torch.autograd.grad((y * wi).sum(), xi, create_graph=True)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    (dw,) = torch.autograd.grad((dx.to(acc) * x.to(acc)).sum(), wi)  # through the backward pass
    return y, dx, dw


@pytest.mark.parametrize("case", range(len(UFD_CASES)))
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_upfirdn2d_channels_last_matches_contiguous(case, dtype):
    c = UFD_CASES[case]
    g = torch.Generator(device="cuda").manual_seed(case)
    x = torch.randn(c[0], device="cuda", generator=g).to(dtype)
    f = _filter(c[1])
    y0 = ufd.upfirdn2d(x, f, up=c[2], down=c[3], padding=c[4], flip_filter=c[5], gain=c[6], impl="ref")
    w = torch.randn(y0.shape, device="cuda", generator=g).to(dtype)
    cont = _ufd_run(x, f, c, "cuda", w)
    last = _ufd_run(x.to(memory_format=CL), f, c, "cuda", w.to(memory_format=CL))
    ref = _ufd_run(x.to(memory_format=CL), f, c, "ref", w.to(memory_format=CL))
    scale = 4 * max(1.0, float(c[6]))
    for name, a, b, r in zip(("y", "dx", "dw"), cont, last, ref):
        assert a.shape == b.shape == r.shape and b.dtype == dtype, name
        if name != "dw":  # the op's output and gradient keep the input's format
            assert _is_cl(b) and _is_cl(r), name
        _close(b, a, dtype, scale)
        _close(b, r, dtype, scale)


def test_upfirdn2d_channels_last_unaligned_and_many_samples():
    f = ufd.setup_filter([1, 3, 3, 1], device="cuda")
    x = torch.randn(2, 16, 12, 10, device="cuda", dtype=torch.float16).to(memory_format=CL)
    buf = torch.empty(x.numel() + 1, device="cuda", dtype=x.dtype)
    xu = buf[1:].view(2, 12, 10, 16).permute(0, 3, 1, 2)  # channels-last, data one element off
    xu.copy_(x)
    assert _is_cl(xu) and xu.data_ptr() % 16 != 0
    for kw in (dict(padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(up=2, padding=[2, 1, 2, 1])):
        y = ufd.upfirdn2d(xu, f, impl="cuda", **kw)
        assert _is_cl(y)
        _close(y, ufd.upfirdn2d(x.contiguous(), f, impl="cuda", **kw), torch.float16)
    x = torch.randn(70000, 8, 3, 3, device="cuda").to(memory_format=CL)  # N > 65535: grid-stride over samples
    _close(ufd.filter2d(x, f, padding=1, impl="cuda"), ufd.filter2d(x.contiguous(), f, padding=1, impl="cuda"),
           torch.float32)


def test_upfirdn2d_channels_last_gradgradcheck_float64():
    x = torch.randn(2, 5, 6, 7, device="cuda", dtype=torch.float64, requires_grad=True)
    f = torch.rand(3, 4, device="cuda", dtype=torch.float64)
    for kw in [dict(up=2, padding=[1, 2, 2, 1]), dict(down=2, padding=[2, 1, -1, 2], flip_filter=True, gain=3),
               dict(padding=[2, 1, 2, 1])]:
        fn = lambda x: ufd.upfirdn2d(x.to(memory_format=CL), f, impl="cuda", **kw)  # noqa: E731
        assert _is_cl(fn(x))
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


# ---------------------------------------------------------------------------------------------
# bias_act
# ---------------------------------------------------------------------------------------------

BA_SHAPES = [(4, 64, 16, 16), (2, 256, 8, 8), (3, 3, 32, 32), (2, 13, 7, 9), (5, 128, 1, 1)]


def _ba_run(x, b, w, act, clamp):
    xi = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    bi = b.detach().clone().requires_grad_()
    y = ba.bias_act(xi, bi, act=act, clamp=clamp, impl="cuda")
    dx, db = torch.autograd.grad((y * w).sum(), (xi, bi), create_graph=True)
    ddx = ddb = None
    if dx.requires_grad:
        ddx, ddb = torch.autograd.grad((dx.float() ** 2).sum(), (xi, bi), allow_unused=True)
    ddx = torch.zeros_like(xi) if ddx is None else ddx
    ddb = torch.zeros_like(bi) if ddb is None else ddb
    return y, dx, db, ddx, ddb


@pytest.mark.parametrize("act", ["linear", "lrelu", "tanh", "swish"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_bias_act_channels_last_matches_contiguous(act, dtype, clamp):
    g = torch.Generator(device="cuda").manual_seed(1)
    for shape in BA_SHAPES:
        x = (torch.randn(shape, device="cuda", generator=g) * 2).to(dtype)
        b = torch.randn(shape[1], device="cuda", generator=g).to(dtype)
        w = torch.randn(shape, device="cuda", generator=g).to(dtype)
        cont = _ba_run(x, b, w, act, clamp)
        last = _ba_run(x.to(memory_format=CL), b, w.to(memory_format=CL), act, clamp)
        for name, a, c in zip(("y", "dx", "db", "ddx", "ddb"), cont, last):
            assert a.shape == c.shape and a.dtype == c.dtype, name
            if name in ("y", "dx", "ddx"):
                assert _is_cl(c), name
            # The same kernel maths in both layouts: only the bias sums' order differs.
            scale = x.numel() / x.shape[1] if name in ("db", "ddb") else 1.0
            _close(c, a, dtype, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_act_channels_last_epilogue(dtype):
    g = torch.Generator(device="cuda").manual_seed(2)
    n, c, h, w = 4, 64, 8, 8
    x = torch.randn(n, c, h, w, device="cuda", generator=g).to(dtype)
    b = torch.randn(c, device="cuda", generator=g)
    s = torch.rand(n, c, device="cuda", generator=g) + 0.5
    addends = [torch.randn(h, w, device="cuda", generator=g), torch.randn(n, 1, h, w, device="cuda", generator=g),
               torch.randn(1, c, h, w, device="cuda", generator=g),
               torch.randn(n, c, h, w, device="cuda", generator=g).to(memory_format=CL), None]
    for a in addends:
        for ss in (s, None):
            if a is None and ss is None:
                continue
            with torch.no_grad():
                y = ba.bias_act(x.to(memory_format=CL), b, act="lrelu", clamp=0.7, scale=ss, addend=a)
                y0 = ba.bias_act(x, b, act="lrelu", clamp=0.7, scale=ss, addend=a)
            assert _is_cl(y)
            _close(y, y0, dtype)


@pytest.mark.parametrize("act", ["lrelu", "swish"])
def test_bias_act_channels_last_gradgradcheck_float64(act):
    x = torch.randn(2, 6, 3, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, device="cuda", dtype=torch.float64, requires_grad=True)
    fn = lambda x, b: ba.bias_act(x.to(memory_format=CL), b, act=act, clamp=1.5, impl="cuda")  # noqa: E731
    assert _is_cl(fn(x, b))
    assert torch.autograd.gradcheck(fn, (x, b))
    assert torch.autograd.gradgradcheck(fn, (x, b))


# ---------------------------------------------------------------------------------------------
# Networks: fp16_channels_last gives the same images and logits
# ---------------------------------------------------------------------------------------------

def _g(channels_last):
    torch.manual_seed(0)
    return Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=64, img_channels=3,
                     mapping_kwargs=dict(num_layers=2),
                     synthesis_kwargs=dict(channel_base=2048, channel_max=128, num_fp16_res=2, conv_clamp=256,
                                           fp16_channels_last=channels_last)).cuda()


def _d(channels_last, architecture):
    torch.manual_seed(0)
    return Discriminator(c_dim=0, img_resolution=64, img_channels=3, architecture=architecture, channel_base=2048,
                         channel_max=128, num_fp16_res=2, conv_clamp=256,
                         block_kwargs=dict(fp16_channels_last=channels_last)).cuda()


def _images_and_grads(G, z):
    """G's images of z, the latents' gradient under a loss of a GAN loss's scale, and the images of
    the eval path (the fused epilogue, no grad)."""
    with no_tf32():
        ws = G.mapping(z, None).detach().requires_grad_()
        img = G.synthesis(ws, noise_mode="const")
        (gw,) = torch.autograd.grad((img * img.detach()).mean(), ws)
        with torch.no_grad():
            G.eval()
            img_eval = G.synthesis(ws, noise_mode="const")
            G.train()
    return img.detach(), gw, img_eval


def _assert_fp16_close(got, want):
    for a, b in zip(got, want):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        assert float((a - b).abs().max()) <= 2e-2 * (1 + float(a.abs().max()))


def test_generator_fp16_channels_last_same_images_and_grads():
    G0, G1 = _g(False), _g(True)
    G1.load_state_dict(G0.state_dict())
    assert G1.synthesis.b64.channels_last and not G0.synthesis.b64.channels_last
    z = torch.randn(8, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    _assert_fp16_close(_images_and_grads(G0, z), _images_and_grads(G1, z))


def test_the_run_time_switch_gives_what_the_built_in_layout_gives():
    """SynthesisNetwork.set_channels_last on an NCHW-built generator (weights left NCHW): the images
    and gradients of one built channels-last, and the pipeline's frames within fp16 rounding."""
    from pathlib import Path

    from src.pipeline import FaceAnimator

    G0, G1 = _g(False), _g(True)
    G1.load_state_dict(G0.state_dict())
    G0.synthesis.set_channels_last()
    assert G0.synthesis.b64.channels_last and not G0.synthesis.b4.channels_last
    z = torch.randn(8, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    _assert_fp16_close(_images_and_grads(G0, z), _images_and_grads(G1, z))
    embedded = Path(__file__).resolve().parents[1] / "assets" / "animator_synthetic.safetensors"
    plain = FaceAnimator.from_pretrained(embedded, device="cuda", channels_last=False)
    nhwc = FaceAnimator.from_pretrained(embedded, device="cuda", channels_last=True)
    ws = plain.sample_latents(seeds=[1, 2])
    with torch.no_grad(), no_tf32():
        a = plain.animate(ws, ["The person is smiling.", "The person is winking."], num_frames=8)["frames"]
        b = nhwc.animate(ws, ["The person is smiling.", "The person is winking."], num_frames=8)["frames"]
    assert float((a - b).abs().max()) <= 2e-2  # frames in [-1, 1]; the shipped top blocks run in fp16


@pytest.mark.parametrize("architecture", ["resnet", "skip"])
def test_discriminator_fp16_channels_last_same_logits_and_r1(architecture):
    D0, D1 = _d(False, architecture), _d(True, architecture)
    D1.load_state_dict(D0.state_dict())
    img0 = torch.randn(8, 3, 64, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(4))
    out = {}
    with no_tf32():
        for name, D in (("nchw", D0), ("nhwc", D1)):
            D.zero_grad(set_to_none=True)
            img = img0.clone().requires_grad_()
            logits = D(img, None)
            (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)  # R1: double backward
            r1 = grad.square().sum([1, 2, 3]).mean()
            (r1 + logits.mean()).backward()
            out[name] = (logits.detach(), r1.detach(), D.b64.conv0.weight.grad.clone(), D.b32.conv1.weight.grad.clone())
    for a, b in zip(out["nchw"], out["nhwc"]):
        assert torch.isfinite(a).all() and torch.isfinite(b).all()
        assert float((a - b).abs().max()) <= 5e-2 * (1 + float(a.abs().max()))
