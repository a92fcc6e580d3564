"""CPU tests of bias_act's scale/addend epilogue (the generator's demodulation + noise fused into
bias_act): reference maths, broadcast forms, autograd, input checks, the CUDA-path dispatch (with
a fake plugin that follows the kernel's contract), and an unchanged generator output."""
from __future__ import annotations

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import policy
from src.ops.memory_format import is_channels_last
from src.stylegan import layers
from src.stylegan.layers import modulated_conv2d, modulated_conv2d_deferred
from src.stylegan.synthesis import SynthesisLayer
from src.utils.errors import UserError
from tests.fixtures_stylegan import tiny_generator

ACTS = list(ba.ACTIVATIONS)


@pytest.fixture(autouse=True)
def _fresh_policy(monkeypatch, tmp_path):
    monkeypatch.delenv("LGFA_OPS_IMPL", raising=False)
    monkeypatch.setenv("LGFA_CACHE_DIR", str(tmp_path / "cache"))
    policy.reset()
    yield
    policy.reset()


def _addend_forms(n, c, spatial):
    """The accepted addend shapes for x [n, c, *spatial]."""
    return {"spatial": list(spatial), "1,1": [1, 1, *spatial], "N,1": [n, 1, *spatial],
            "1,C": [1, c, *spatial], "N,C": [n, c, *spatial]}


def _unfused(x, b, scale, addend, **kw):
    """What the generator computed before the fusion: addcmul in x.dtype, then bias_act."""
    s = scale.to(x.dtype).reshape(*scale.shape, *([1] * (x.ndim - 2))) if scale is not None else None
    if s is not None and addend is not None:
        x = torch.addcmul(addend.to(x.dtype), x, s)
    elif s is not None:
        x = x * s
    elif addend is not None:
        x = x + addend.to(x.dtype)
    return ba.bias_act(x, b, **kw)


# ---------------------------------------------------------------------------------------------
# Reference maths
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 7, 9), (3, 2, 6), (4, 3)])
def test_ref_equals_addcmul_then_bias_act(dtype, shape):
    g = torch.Generator().manual_seed(0)
    n, c, spatial = shape[0], shape[1], shape[2:]
    x = (torch.randn(shape, generator=g) * 2).to(dtype)
    b = torch.randn(c, generator=g)
    scale = torch.rand(n, c, generator=g) + 0.5  # fp32, as the generator's dcoefs
    for act, clamp in (("lrelu", None), ("lrelu", 0.8), ("tanh", None), ("linear", 1.5)):
        kw = dict(act=act, clamp=clamp)
        for form, ashape in _addend_forms(n, c, spatial).items():
            addend = torch.randn(ashape, generator=g)  # fp32, as the generator's noise
            for s, a in ((scale, addend), (None, addend), (scale, None)):
                y = ba.bias_act(x, b, scale=s, addend=a, **kw)
                expected = _unfused(x, b, s, a, **kw)
                assert y.dtype == dtype and y.shape == x.shape
                assert torch.equal(y, expected), (form, act, clamp, s is None, a is None)


@pytest.mark.parametrize("act", ACTS)
def test_ref_matches_closed_form_float64(act):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 5, 6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    s = torch.randn(3, 4, generator=g, dtype=torch.float64)
    a = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)
    y = ba.bias_act(x, b, act=act, gain=1.3, clamp=2.0, scale=s, addend=a)
    z = x * s[:, :, None, None] + a + b[None, :, None, None]
    torch.testing.assert_close(y, (ba._act_ref(z, act, ba.ACTIVATIONS[act].def_alpha) * 1.3).clamp(-2, 2))


def test_none_keeps_existing_behaviour():
    x = torch.randn(2, 3, 4, 4)
    b = torch.randn(3)
    assert torch.equal(ba.bias_act(x, b, act="lrelu", clamp=0.5, scale=None, addend=None),
                       ba.bias_act(x, b, act="lrelu", clamp=0.5))
    assert torch.equal(ba.bias_act(x, scale=None), ba.bias_act(x))


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
@pytest.mark.parametrize("form", ["spatial", "N,1", "1,C"])
def test_ref_gradcheck_float64(act, form):
    g = torch.Generator().manual_seed(2)
    n, c, spatial = 2, 3, (3, 2)
    x = torch.randn(n, c, *spatial, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    s = torch.randn(n, c, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.randn(_addend_forms(n, c, spatial)[form], generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda x, b, s, a: ba.bias_act(x, b, act=act, clamp=1.5, scale=s, addend=a)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, b, s, a))
    assert torch.autograd.gradgradcheck(fn, (x, b, s, a))


def test_bad_epilogue_inputs():
    x = torch.randn(2, 3, 4, 5)
    with pytest.raises(UserError, match=r"scale must be .* shape \[2, 3\]"):
        ba.bias_act(x, scale=torch.ones(3))
    with pytest.raises(UserError, match=r"scale must be .* shape \[2, 3\]"):
        ba.bias_act(x, scale=torch.ones(2, 3, 1, 1))
    with pytest.raises(UserError, match="scale must be a floating-point"):
        ba.bias_act(x, scale=torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(UserError, match=r"addend must be .* shape \[4, 5\] or \[1\|2, 1\|3, 4, 5\]") as info:
        ba.bias_act(x, addend=torch.ones(4, 4))
    assert "\n" not in str(info.value)  # one-line messages
    with pytest.raises(UserError, match="addend must be"):
        ba.bias_act(x, addend=torch.ones(2, 4, 5))  # [N, *spatial]: ambiguous, not accepted
    with pytest.raises(UserError, match="addend must be"):
        ba.bias_act(x, addend=torch.ones(2, 2, 4, 5))  # C mismatch
    with pytest.raises(UserError, match="addend must be"):
        ba.bias_act(x, addend=torch.ones(3, 1, 4, 5))  # N mismatch
    with pytest.raises(UserError, match="addend must be"):
        ba.bias_act(x, addend=[1.0])
    with pytest.raises(UserError, match="dim=1"):
        ba.bias_act(x, torch.zeros(4), dim=2, scale=torch.ones(2, 3))
    with pytest.raises(UserError, match="dim=1"):
        ba.bias_act(torch.randn(5), dim=0, addend=torch.ones(5))
    with pytest.raises(UserError, match="scale is on meta"):
        ba.bias_act(x, scale=torch.ones(2, 3, device="meta"))
    with pytest.raises(UserError, match="addend is on meta"):
        ba.bias_act(x, addend=torch.ones(4, 5, device="meta"))


# ---------------------------------------------------------------------------------------------
# CUDA-path dispatch on CPU: a fake plugin that follows the kernel's contract
# ---------------------------------------------------------------------------------------------

class _FakeEpiloguePlugin:
    """bias_act_epilogue(x, b, s, a, act, alpha, gain, clamp) as the C++ entry checks and computes it
    (in float64, as a stand-in for the kernel's op-math); bias_act(...) order 0 only."""

    def __init__(self):
        self.calls = []

    def bias_act_epilogue(self, x, b, s, a, act_idx, alpha, gain, clamp):
        self.calls.append("epilogue")
        n, c = x.shape[:2]
        inner = x[0, 0].numel()
        nhwc = is_channels_last(x)  # the kernel's contract: NCHW rows, or channels-last with any addend strides
        assert x.is_contiguous(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
        for t in (b, s, a):
            assert t.dtype == x.dtype and (t.is_contiguous() or (nhwc and t is a))
        assert b.numel() == 0 or tuple(b.shape) == (c,)
        assert s.numel() == 0 or tuple(s.shape) == (n, c)
        assert a.numel() == 0 or (a.ndim == 3 and a.shape[0] in (1, n) and a.shape[1] in (1, c)
                                  and a.shape[2] == inner)
        z = x.double().reshape(n, c, inner)
        if s.numel():
            z = z * s.double()[:, :, None]
        if a.numel():
            z = z + a.double()
        if b.numel():
            z = z + b.double()[None, :, None]
        act = next(k for k, v in ba.ACTIVATIONS.items() if v.cuda_idx == act_idx)
        out = ba._act_ref(z, act, alpha) * gain
        out = out.clamp(-clamp, clamp) if clamp >= 0 else out
        return out.reshape(x.shape).to(x.dtype, memory_format=torch.channels_last if nhwc else torch.contiguous_format)

    def bias_act(self, x, b, g, dim, act_idx, order, alpha, gain, clamp):
        self.calls.append(("bias_act", order, x.clone()))
        assert order == 0
        act = next(k for k, v in ba.ACTIVATIONS.items() if v.cuda_idx == act_idx)
        return ba._bias_act_ref(x, b if b.numel() else None, dim, act, alpha, gain, clamp)


@pytest.fixture
def fake_plugin(monkeypatch):
    plugin = _FakeEpiloguePlugin()
    monkeypatch.setattr(ba.policy, "resolve", lambda impl, *tensors: plugin)
    return plugin


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_cuda_path_no_grad_uses_fused_kernel_for_every_addend_form(fake_plugin, dtype):
    g = torch.Generator().manual_seed(3)
    n, c, spatial = 3, 4, (5, 6)
    x = torch.randn(n, c, *spatial, generator=g).to(dtype)
    b = torch.randn(c, generator=g)
    s = torch.rand(n, c, generator=g) + 0.5
    for form, ashape in _addend_forms(n, c, spatial).items():
        a = torch.randn(ashape, generator=g)
        for ss, aa in ((s, a), (None, a), (s, None)):
            fake_plugin.calls.clear()
            with torch.no_grad():
                y = ba.bias_act(x, b, act="lrelu", clamp=0.7, scale=ss, addend=aa)
            assert fake_plugin.calls == ["epilogue"], form
            ref = ba.bias_act(x, b, act="lrelu", clamp=0.7, scale=ss, addend=aa, impl="ref")
            tol = dict(atol=2e-3, rtol=2e-3) if dtype == torch.float16 else {}
            torch.testing.assert_close(y, ref, **tol)
    # channels_last x: handed to the kernel as is, the output keeps the format
    xc = x.to(memory_format=torch.channels_last)
    fake_plugin.calls.clear()
    with torch.no_grad():
        yc = ba.bias_act(xc, b, scale=s, addend=a)
    assert fake_plugin.calls == ["epilogue"] and yc.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(yc, ba.bias_act(x, b, scale=s, addend=a, impl="ref"))


def test_cuda_path_nothing_requires_grad_also_fuses(fake_plugin):
    x, s, a = torch.randn(2, 3, 4, 4), torch.rand(2, 3), torch.randn(4, 4)
    y = ba.bias_act(x, torch.zeros(3), scale=s, addend=a)  # grad mode on, but no input needs grad
    assert fake_plugin.calls == ["epilogue"] and not y.requires_grad


@pytest.mark.parametrize("needs", ["x", "b", "scale", "addend"])
def test_cuda_path_under_grad_falls_back_to_addcmul_then_bias_act(fake_plugin, needs):
    g = torch.Generator().manual_seed(4)
    inputs = dict(x=torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64),
                  b=torch.randn(3, generator=g, dtype=torch.float64),
                  scale=torch.rand(2, 3, generator=g, dtype=torch.float64),
                  addend=torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64))
    inputs[needs].requires_grad_()
    y = ba.bias_act(inputs["x"], inputs["b"], act="lrelu", scale=inputs["scale"], addend=inputs["addend"])
    assert len(fake_plugin.calls) == 1 and fake_plugin.calls[0][:2] == ("bias_act", 0)
    expected_x = torch.addcmul(inputs["addend"], inputs["x"], inputs["scale"][:, :, None, None])
    assert torch.equal(fake_plugin.calls[0][2], expected_x.detach())
    assert y.requires_grad
    ref = ba.bias_act(inputs["x"], inputs["b"], act="lrelu", scale=inputs["scale"], addend=inputs["addend"],
                      impl="ref")
    torch.testing.assert_close(y, ref)


# ---------------------------------------------------------------------------------------------
# Generator: identical output to the unfused formula
# ---------------------------------------------------------------------------------------------

def _old_synthesis_layer_forward(self, x, w, noise_mode="random", fused_modconv=False, gain=1):
    """SynthesisLayer.forward as it was before the fusion: modulated_conv2d applies dcoefs and
    noise (addcmul), then bias_act."""
    styles = self.affine(w)
    noise = None
    if self.use_noise and noise_mode == "random":
        noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
            * self.noise_strength
    elif self.use_noise and noise_mode == "const":
        noise = self.noise_const * self.noise_strength
    x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
                         resample_filter=self.resample_filter, demodulate=True, fused_modconv=fused_modconv)
    act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return ba.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


def _synth(G, ws, noise_mode, fused_modconv, seed=5):
    torch.manual_seed(seed)  # same random noise for the old and new forward
    return G.synthesis(ws, noise_mode=noise_mode, fused_modconv=fused_modconv)


@pytest.mark.parametrize("noise_mode", ["random", "const", "none"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("fp16", [False, True])
def test_generator_output_identical_to_unfused_formula(monkeypatch, noise_mode, batch, fp16):
    if fp16:  # the fp16 blocks' code path (fp16 convs, pre-normalised modconv, clamp) on CPU
        monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda", "cpu"})
    G = tiny_generator(res=16, num_fp16_res=2 if fp16 else 0, conv_clamp=256 if fp16 else None)
    ws = G.mapping(torch.randn(batch, G.z_dim), None).detach()
    with torch.no_grad():
        new = {f: _synth(G, ws, noise_mode, f) for f in (None, False, True)}
        monkeypatch.setattr(SynthesisLayer, "forward", _old_synthesis_layer_forward)
        old = {f: _synth(G, ws, noise_mode, f) for f in (None, False, True)}
    for f in new:
        assert new[f].dtype == torch.float32 and torch.isfinite(new[f]).all()
        assert torch.equal(new[f], old[f]), f
    if noise_mode == "random":  # the noise really is random (and really seeded above)
        assert not torch.equal(_synth(G, ws, noise_mode, False, seed=6), old[False])


def test_generator_gradients_identical_to_unfused_formula(monkeypatch):
    G = tiny_generator(res=16).train()
    ws = G.mapping(torch.randn(3, G.z_dim), None).detach().requires_grad_()
    params = [p for n, p in G.synthesis.named_parameters() if "noise_strength" in n or n.endswith("conv1.weight")]

    def grads():
        img = _synth(G, ws, "random", False)
        return torch.autograd.grad(img.square().sum(), [ws, *params])

    new = grads()
    monkeypatch.setattr(SynthesisLayer, "forward", _old_synthesis_layer_forward)
    old = grads()
    for a, b in zip(new, old):
        assert torch.equal(a, b)


def test_modulated_conv2d_public_function_unchanged():
    """The public modulated_conv2d still applies demodulation and noise itself."""
    g = torch.Generator().manual_seed(7)
    x, w, s = torch.randn(2, 4, 6, 6, generator=g), torch.randn(5, 4, 3, 3, generator=g), torch.randn(2, 4, generator=g)
    noise = torch.randn(2, 1, 6, 6, generator=g)
    y = modulated_conv2d(x, w, s, noise=noise, padding=1)
    z, d, nz = modulated_conv2d_deferred(x, w, s, noise=noise, padding=1)
    assert nz is noise and d.shape == (2, 5) and d.dtype == torch.float32
    assert torch.equal(y, torch.addcmul(noise, z, d[:, :, None, None]))
    # fused and 1x1 paths apply everything themselves
    for kw in (dict(fused_modconv=True), dict(padding=0)):
        wk = w if "fused_modconv" in kw else w[:, :, :1, :1]
        z, d, nz = modulated_conv2d_deferred(x, wk, s, noise=noise, **{"padding": 1, **kw})
        assert d is None and nz is None
        assert torch.equal(z, modulated_conv2d(x, wk, s, noise=noise, **{"padding": 1, **kw}))
