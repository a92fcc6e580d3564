"""Channels-last (NHWC) inputs on CPU: the reference ops keep the format and give the NCHW results,
the CUDA autograd wiring hands channels-last tensors to the kernels (a fake plugin checks it), the
fp16 blocks of G and D stay channels-last end to end, and the GAN config passes the option."""
from __future__ import annotations

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import upfirdn2d as ufd
from src.ops.memory_format import is_channels_last, kernel_format
from src.stylegan import Discriminator, Generator, layers
from tests.test_ops import _FakePlugin

CL = torch.channels_last


def _is_cl(t):
    return t.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 1, 1), (2, 1, 4, 5), (2, 1, 1, 1), (1, 3, 4, 1)])
def test_memory_format_follows_aten(shape):
    from torch._prims_common import suggest_memory_format

    for fmt in (torch.contiguous_format, CL):
        x = torch.empty(shape).to(memory_format=fmt)
        assert is_channels_last(x) == (suggest_memory_format(x) == CL)
        assert kernel_format(x) == (CL if is_channels_last(x) else torch.contiguous_format)
    assert not is_channels_last(torch.empty(2, 3, 4)) and not is_channels_last(torch.empty(2, 3, 4, 5)[:, :, ::2])


# (x shape, filter taps, up, down, padding, flip, gain): the networks' calls, then the generic ones
UFD_CASES = [
    ((2, 8, 11, 11), [1, 3, 3, 1], 1, 1, [1, 1, 1, 1], False, 4.0),
    ((2, 8, 8, 8), [1, 3, 3, 1], 1, 1, [2, 2, 2, 2], False, 1.0),
    ((2, 8, 8, 8), [1, 3, 3, 1], 1, 2, [1, 1, 1, 1], False, 1.0),
    ((2, 3, 8, 8), [1, 3, 3, 1], 2, 1, [2, 1, 2, 1], False, 4.0),
    ((1, 5, 9, 7), [1, 2, 1], 4, 1, [1, 2, 0, 3], True, 16.0),
    ((2, 4, 10, 11), [1, 1, 2, 2, 3, 3, 4, 4], 1, 1, [3, 4, -2, 5], False, 2.0),
    ((2, 4, 9, 7), [1, 3, 3, 1], (2, 1), (1, 2), [0, 1, 2, -1], True, 1.0),
]


@pytest.mark.parametrize("case", UFD_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_upfirdn2d_ref_channels_last(case, dtype):
    shape, taps, up, down, pad, flip, gain = case
    g = torch.Generator().manual_seed(0)
    f = ufd.setup_filter(taps)
    x = torch.randn(shape, generator=g, dtype=dtype)
    res = {}
    for name, xi in (("nchw", x.clone()), ("nhwc", x.to(memory_format=CL))):
        xi.requires_grad_()
        y = ufd.upfirdn2d(xi, f, up=up, down=down, padding=pad, flip_filter=flip, gain=gain, impl="ref")
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        (dx,) = torch.autograd.grad((y * w).sum(), xi)
        res[name] = (y, dx)
    for a, b in zip(res["nchw"], res["nhwc"]):
        assert _is_cl(b)
        torch.testing.assert_close(b, a)


def test_upfirdn2d_ref_channels_last_gradgradcheck():
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    f = ufd.setup_filter([1, 3, 3, 1]).double()
    for kw in (dict(up=2, padding=[2, 1, 2, 1]), dict(down=2, padding=1), dict(up=(2, 1), padding=[1, 0, 2, 1])):
        fn = lambda x: ufd.upfirdn2d(x.to(memory_format=CL), f, impl="ref", **kw)  # noqa: E731
        assert _is_cl(fn(x))
        assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("act", ["linear", "lrelu", "tanh", "swish"])
def test_bias_act_ref_channels_last(act):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 6, 5, 4, generator=g, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    s, a = torch.rand(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 1, 5, 4, generator=g, dtype=torch.float64)
    for kw in (dict(), dict(scale=s, addend=a), dict(addend=a[0, 0])):
        y0 = ba.bias_act(x, b, act=act, clamp=0.8, impl="ref", **kw)
        xc = x.to(memory_format=CL).requires_grad_()
        y = ba.bias_act(xc, b, act=act, clamp=0.8, impl="ref", **kw)
        (dx,) = torch.autograd.grad(y.square().sum(), xc)
        assert _is_cl(y) and _is_cl(dx)
        torch.testing.assert_close(y, y0)


def test_torgb_reads_channels_last_in_place():
    """The 1x1 modulated conv (ToRGB) of an NHWC x is one batched GEMM over its [N, H*W, I] rows:
    the NCHW result (same arithmetic), with gradients, and no x * styles pass over the activations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passes(TorchDispatchMode):
        def __init__(self, numel):
            super().__init__()
            self.numel, self.ops = numel, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() == self.numel and func._schema.name != "aten::view" \
                    and not func.is_view:
                self.ops.append(func._schema.name)
            return out

    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 8, 5, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(3, 8, 1, 1, generator=g, dtype=torch.float64)
    styles = torch.randn(3, 8, generator=g, dtype=torch.float64)
    y0 = layers.modulated_conv2d(x, weight, styles, demodulate=False)
    xc = x.to(memory_format=CL).requires_grad_()
    mode = Passes(x.numel())
    with mode:
        y = layers.modulated_conv2d(xc, weight, styles, demodulate=False)
    assert mode.ops == [], mode.ops  # the GEMM reads x once; nothing else touches a tensor of its size
    assert _is_cl(y) and y.shape == y0.shape
    torch.testing.assert_close(y, y0)
    (dx,) = torch.autograd.grad(y.square().sum(), xc)
    (dx0,) = torch.autograd.grad(layers.modulated_conv2d(x.requires_grad_(), weight, styles, demodulate=False)
                                 .square().sum(), x)
    torch.testing.assert_close(dx, dx0)


# ---------------------------------------------------------------------------------------------
# The CUDA autograd wiring with a fake plugin that checks the layouts it is handed
# ---------------------------------------------------------------------------------------------

class _LayoutPlugin(_FakePlugin):
    """Asserts that 4-D channels-last data reach the kernels as such (no NCHW copy) and returns
    results in the input's format, as the CUDA extension does."""

    def __init__(self):
        super().__init__()
        self.formats = []

    def bias_act(self, x, b, g, dim, act_idx, order, alpha, gain, clamp):
        fmt = kernel_format(x) if dim == 1 else torch.contiguous_format
        assert x.is_contiguous(memory_format=fmt)
        assert order == 0 or g.is_contiguous(memory_format=fmt)
        self.formats.append(fmt)
        return super().bias_act(x, b, g, dim, act_idx, order, alpha, gain, clamp).contiguous(memory_format=fmt)

    def upfirdn2d(self, x, f, *args):
        fmt = kernel_format(x)
        assert x.is_contiguous(memory_format=fmt)
        self.formats.append(fmt)
        return super().upfirdn2d(x, f, *args).contiguous(memory_format=fmt)


def test_bias_act_cuda_wiring_keeps_channels_last():
    plugin = _LayoutPlugin()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    spec = ba.ACTIVATIONS["swish"]

    def fn(x, b):
        return ba._bias_act_cuda(plugin, x.to(memory_format=CL), b, 1, spec, 0.2, spec.def_gain, 2.0)

    y = fn(x, b)
    (dx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    assert _is_cl(y)
    torch.testing.assert_close(y, ba.bias_act(x, b, act="swish", clamp=2.0, impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b)) and torch.autograd.gradgradcheck(fn, (x, b))
    assert set(plugin.formats) == {CL} and {0, 1, 2} <= set(plugin.calls)


def test_upfirdn2d_cuda_wiring_keeps_channels_last():
    plugin = _LayoutPlugin()
    x = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_()
    f = ufd.setup_filter([1, 3, 3, 1]).double()
    for up, down, pad in ((2, 1, [2, 1, 2, 1]), (1, 2, [1, 1, 1, 1]), (1, 1, [2, 1, 2, 1])):
        p = ufd._Params(plugin, up, up, down, down, *ufd._parse_padding(pad), False, 1.0)
        fn = lambda x: ufd._UpFirDn2dCuda.apply(x.to(memory_format=CL), f, p)  # noqa: E731
        y = fn(x)
        xc = x.detach().to(memory_format=CL).requires_grad_()
        (dx,) = torch.autograd.grad((ufd._UpFirDn2dCuda.apply(xc, f, p) * torch.randn(y.shape)).sum(), xc)
        assert _is_cl(y) and _is_cl(dx)
        torch.testing.assert_close(y, ufd.upfirdn2d(x, f, up=up, down=down, padding=pad, impl="ref"))
        assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
    assert set(plugin.formats) == {CL}


# ---------------------------------------------------------------------------------------------
# Networks: fp16 blocks channels-last end to end (the CUDA fp16 path forced on CPU, ref ops)
# ---------------------------------------------------------------------------------------------

def _layout_hooks(module, kinds, seen):
    return [m.register_forward_hook(lambda m, i, o, name=name: seen.append((name, o.dtype, _is_cl(o))))
            for name, m in module.named_modules() if isinstance(m, kinds)]


def test_fp16_blocks_stay_channels_last(monkeypatch):
    from src.stylegan.synthesis import SynthesisLayer

    monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda", "cpu"})
    kw = dict(z_dim=16, w_dim=16, img_resolution=32, mapping_kwargs=dict(num_layers=2))
    syn = dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256)
    torch.manual_seed(0)
    G0 = Generator(**kw, synthesis_kwargs=syn)
    G1 = Generator(**kw, synthesis_kwargs=dict(syn, fp16_channels_last=True))
    G1.load_state_dict(G0.state_dict())
    ws = G0.mapping(torch.randn(4, 16), None).detach()
    seen = []
    hooks = _layout_hooks(G1.synthesis, (SynthesisLayer,), seen)
    with torch.no_grad():
        a, b = G0.synthesis(ws, noise_mode="const"), G1.synthesis(ws, noise_mode="const")
    for h in hooks:
        h.remove()
    fp16 = [(name, cl) for name, dtype, cl in seen if dtype == torch.float16]
    assert len(fp16) == 4 and all(cl for _, cl in fp16), seen  # b16, b32: conv0 and conv1 each
    assert float((a - b).abs().max()) < 0.02 * (1 + float(a.abs().max()))

    dkw = dict(img_resolution=32, channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256)
    torch.manual_seed(0)
    D0 = Discriminator(**dkw)
    D1 = Discriminator(**dkw, block_kwargs=dict(fp16_channels_last=True))
    D1.load_state_dict(D0.state_dict())
    seen.clear()
    hooks = _layout_hooks(D1, (layers.Conv2dLayer,), seen)
    img = torch.randn(4, 3, 32, 32)
    out = {}
    for name, D in (("nchw", D0), ("nhwc", D1)):
        x = img.clone().requires_grad_()
        logits = D(x)
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        grad.square().sum().backward()  # R1-style double backward through the channels-last blocks
        out[name] = (logits.detach(), grad.detach(), D.b32.conv0.weight.grad)
    for h in hooks:
        h.remove()
    fp16 = [(name, cl) for name, dtype, cl in seen if dtype == torch.float16]
    assert fp16 and all(cl for _, cl in fp16), seen
    for x0, x1 in zip(out["nchw"], out["nhwc"]):
        assert float((x0 - x1).abs().max()) < 0.05 * (1 + float(x0.abs().max()))


def test_gan_config_passes_fp16_channels_last():
    import src.embedded.training.gan as sg
    from src.config.compose import compose_config
    from tests.test_gan_training import tiny

    cfg = compose_config("train", ["task=stylegan"])
    assert cfg.model.G_kwargs.synthesis_kwargs.fp16_channels_last is False  # off by default
    assert cfg.model.D_kwargs.block_kwargs.fp16_channels_last is False
    cfg = compose_config("train", ["task=stylegan", "model.G_kwargs.synthesis_kwargs.fp16_channels_last=true",
                                   "model.D_kwargs.block_kwargs.fp16_channels_last=true"])
    assert cfg.model.G_kwargs.synthesis_kwargs.fp16_channels_last is True
    kw = tiny(precision=dict(mode="fp16_res"))
    kw["G_kwargs"]["synthesis_kwargs"].update(num_fp16_res=2, fp16_channels_last=True)
    kw["D_kwargs"].update(num_fp16_res=2, block_kwargs=dict(fp16_channels_last=True))
    m = sg.StyleGANModule(**kw)
    assert m.G.synthesis.b16.channels_last and m.G_ema.synthesis.b16.channels_last
    assert not m.G.synthesis.b4.channels_last  # fp32 blocks stay NCHW
    assert m.D.b16.channels_last and m.hparams["G_kwargs"]["synthesis_kwargs"]["fp16_channels_last"] is True
