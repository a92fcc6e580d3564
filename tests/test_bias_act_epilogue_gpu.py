"""GPU tests of bias_act's scale/addend epilogue: the forward-only fused CUDA kernel against a
float64 oracle and the reference, the vector/flat/unaligned/many-rows/64-bit-index layouts, the
autograd fallback under grad (incl. double backward), and the whole generator CUDA vs ref."""
from __future__ import annotations

import contextlib

import pytest
import torch

from src.ops import bias_act as ba
from src.ops import build, policy
from src.stylegan import Generator

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

ACTS = list(ba.ACTIVATIONS)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The kernel rounds once, at the end, from float op-math: vs a float64 oracle on the same (rounded)
# inputs it is within about one unit in the last place of the output dtype.
ORACLE_TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=2e-3),
              torch.bfloat16: dict(atol=8e-3, rtol=1.6e-2), torch.float64: dict(atol=1e-12, rtol=1e-12)}
# vs the same-dtype reference, which also rounds after addcmul, after the bias and after the act.
REF_TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-2, rtol=2e-2),
           torch.bfloat16: dict(atol=1e-1, rtol=5e-2), torch.float64: dict(atol=1e-10, rtol=1e-10)}


from tests.gpu_helpers import no_tf32, strict_cuda_policy  # noqa: E402,F401  (autouse: a failed build fails)


@pytest.fixture
def spy(monkeypatch):
    """Counts calls of the fused kernel's binding."""
    plugin = build.get_plugin()
    calls = []
    real = plugin.bias_act_epilogue

    def wrapped(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(plugin, "bias_act_epilogue", wrapped)
    return calls


def _addend_shapes(n, c, spatial):
    return {"spatial": list(spatial), "1,1": [1, 1, *spatial], "N,1": [n, 1, *spatial],
            "1,C": [1, c, *spatial], "N,C": [n, c, *spatial]}


def _oracle(x, b, s, a, act, clamp, dtype):
    """float64 reference on the operands as the kernel sees them (cast to x.dtype first)."""
    d = lambda t: None if t is None else t.to(dtype).double()  # noqa: E731
    return ba.bias_act(x.double(), d(b), act=act, clamp=clamp, scale=d(s), addend=d(a), impl="ref")


def _inputs(n, c, spatial, dtype, gen):
    x = (torch.randn(n, c, *spatial, device="cuda", generator=gen) * 2).to(dtype)
    b = torch.randn(c, device="cuda", generator=gen)
    s = torch.rand(n, c, device="cuda", generator=gen) * 1.5 + 0.25  # fp32 like the generator's dcoefs
    return x, b, s


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("clamp", [None, 0.7])
def test_fused_forward_matches_oracle_and_reference(act, dtype, clamp, spy):
    gen = torch.Generator(device="cuda").manual_seed(0)
    expected_calls = 0
    for n in (1, 3, 16):
        for c in (3, 32, 64):
            for spatial in ((7, 9), (64, 64)):
                x, b, s = _inputs(n, c, spatial, dtype, gen)
                for form, ashape in _addend_shapes(n, c, spatial).items():
                    a = torch.randn(ashape, device="cuda", generator=gen)  # fp32 like the noise
                    for ss, aa in ((s, a), (None, a), (s, None)) if form == "N,1" else ((s, a),):
                        with torch.no_grad():
                            y = ba.bias_act(x, b, act=act, clamp=clamp, scale=ss, addend=aa)
                        expected_calls += 1
                        assert y.dtype == dtype and y.shape == x.shape and y.is_contiguous()
                        what = f"n={n} c={c} spatial={spatial} addend={form} scale={ss is not None}"
                        torch.testing.assert_close(y.double(), _oracle(x, b, ss, aa, act, clamp, dtype).to(
                            dtype).double(), **ORACLE_TOL[dtype], msg=lambda m: f"{what}: {m}")
                        if dtype == torch.float32:
                            ref = ba.bias_act(x, b, act=act, clamp=clamp, scale=ss, addend=aa, impl="ref")
                            torch.testing.assert_close(y, ref, **REF_TOL[dtype])
    assert len(spy) == expected_calls  # every call above took the fused kernel


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
def test_fused_forward_same_dtype_reference_and_no_bias(dtype):
    gen = torch.Generator(device="cuda").manual_seed(1)
    for spatial in ((64, 64), (128, 128)):  # half precision: packed rows / one block column per row
        x, b, s = _inputs(3, 32, spatial, dtype, gen)
        a = torch.randn(3, 1, *spatial, device="cuda", generator=gen)
        for bb in (b, None):
            with torch.no_grad():
                y = ba.bias_act(x, bb, act="lrelu", clamp=256, scale=s, addend=a)
            ref = ba.bias_act(x, bb, act="lrelu", clamp=256, scale=s, addend=a, impl="ref")
            torch.testing.assert_close(y.float(), ref.float(), **REF_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_fused_forward_unaligned_noncontiguous_and_many_rows(dtype, spy):
    gen = torch.Generator(device="cuda").manual_seed(2)
    n, c, h, w = 2, 8, 64, 64
    # x and addend one element off 16-byte alignment: the flat kernel must take over.
    base = torch.randn(n * c * h * w + 1, device="cuda", generator=gen).to(dtype)
    x = base[1:].view(n, c, h, w)
    abase = torch.randn(n * h * w + 1, device="cuda", generator=gen).to(dtype)
    a_unaligned = abase[1:].view(n, 1, h, w)
    s = torch.rand(n, c, device="cuda", generator=gen) + 0.5
    b = torch.randn(c, device="cuda", generator=gen)
    x_aligned = x.clone()
    cases = [(x, a_unaligned), (x_aligned, a_unaligned), (x, a_unaligned.clone()),
             (x_aligned.to(memory_format=torch.channels_last), a_unaligned.clone())]
    for xi, ai in cases:
        with torch.no_grad():
            y = ba.bias_act(xi, b, act="lrelu", clamp=0.5, scale=s, addend=ai)
        torch.testing.assert_close(y.double(), _oracle(xi, b, s, ai, "lrelu", 0.5, dtype).to(dtype).double(),
                                   **ORACLE_TOL[dtype])
    # rows = N * C > 65535 (grid-stride over rows), 1-D spatial, addend per sample and channel
    n, c, inner = 2, 40000, 512
    x = torch.randn(n, c, inner, device="cuda", generator=gen).to(dtype)
    s = torch.rand(n, c, device="cuda", generator=gen) + 0.5
    for ashape in ([n, 1, inner], [1, c, inner], [n, c, inner]):
        a = torch.randn(ashape, device="cuda", generator=gen).to(dtype)
        with torch.no_grad():
            y = ba.bias_act(x, None, act="relu", scale=s, addend=a)
        torch.testing.assert_close(y.double(), _oracle(x, None, s, a, "relu", None, dtype).to(dtype).double(),
                                   **ORACLE_TOL[dtype])
    # [N, C] input (no spatial dims): addend [] / [N, C]
    x2 = torch.randn(5, 7, device="cuda", generator=gen).to(dtype)
    s2 = torch.rand(5, 7, device="cuda", generator=gen)
    for a2 in (torch.tensor(0.5, device="cuda"), torch.randn(5, 7, device="cuda", generator=gen)):
        with torch.no_grad():
            y = ba.bias_act(x2, None, act="tanh", scale=s2, addend=a2)
        torch.testing.assert_close(y.double(), _oracle(x2, None, s2, a2, "tanh", None, dtype).to(dtype).double(),
                                   **ORACLE_TOL[dtype])
    assert len(spy) == len(cases) + 3 + 2


@pytest.mark.slow
@pytest.mark.parametrize("spatial", [(4096, 4100), (4097, 4099)])  # vector rows / flat (odd inner)
def test_fused_forward_more_than_2_31_elements(spatial):
    """64-bit indexing: 2**31 + some elements of fp16; checks the last rows against the oracle."""
    n, c = 2, 64
    x = torch.empty(n, c, *spatial, device="cuda", dtype=torch.float16)
    assert x.numel() > 2 ** 31
    x.normal_()
    gen = torch.Generator(device="cuda").manual_seed(3)
    s = torch.rand(n, c, device="cuda", generator=gen) + 0.5
    a = torch.randn(n, 1, *spatial, device="cuda", generator=gen)
    b = torch.randn(c, device="cuda", generator=gen)
    with torch.no_grad():
        y = ba.bias_act(x, b, act="lrelu", clamp=256, scale=s, addend=a)
    last = slice(c - 2, c)
    expected = _oracle(x[1:, last], b[last], s[1:, last], a[1:], "lrelu", 256, torch.float16)
    torch.testing.assert_close(y[1:, last].double(), expected.half().double(), **ORACLE_TOL[torch.float16])
    first = _oracle(x[:1, :2], b[:2], s[:1, :2], a[:1], "lrelu", 256, torch.float16)
    torch.testing.assert_close(y[:1, :2].double(), first.half().double(), **ORACLE_TOL[torch.float16])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish"])
def test_fallback_under_grad_matches_reference_gradients(dtype, act, spy):
    gen = torch.Generator(device="cuda").manual_seed(4)
    x, b, s = _inputs(3, 32, (16, 16), dtype, gen)
    a = torch.randn(3, 1, 16, 16, device="cuda", generator=gen)
    w = torch.randn(x.shape, device="cuda", generator=gen).to(dtype)
    outs = {}
    for impl in ("cuda", "ref"):
        leaves = [t.clone().requires_grad_() for t in (x, b, s, a)]
        y = ba.bias_act(leaves[0], leaves[1].to(dtype), act=act, scale=leaves[2], addend=leaves[3], impl=impl)
        grads = torch.autograd.grad((y * w).sum(), leaves, create_graph=True)
        # R1-like second order through x
        (ddx,) = torch.autograd.grad(grads[0].float().square().sum(), leaves[0], allow_unused=True)
        outs[impl] = (y, *grads, torch.zeros_like(x) if ddx is None else ddx)
    assert not spy  # no fused (forward-only) kernel under grad
    for name, c, r in zip(("y", "dx", "db", "ds", "da", "ddx"), outs["cuda"], outs["ref"]):
        assert c.dtype == r.dtype and c.shape == r.shape, name
        tol = REF_TOL[dtype]
        # db / ds / da are sums over many elements: scale the absolute tolerance with the count.
        count = {"db": x.numel() / x.shape[1], "ds": x[0, 0].numel(), "da": x.shape[1]}.get(name, 1)
        factor = 10 if (dtype != torch.float32 and name == "ddx") else 1
        torch.testing.assert_close(c.float(), r.float(), atol=tol["atol"] * count * factor, rtol=tol["rtol"],
                                   msg=lambda m: f"{name}: {m}")


def test_fallback_gradgradcheck_float64():
    gen = torch.Generator(device="cuda").manual_seed(5)
    x = torch.randn(2, 3, 4, 5, device="cuda", dtype=torch.float64, generator=gen, requires_grad=True)
    b = torch.randn(3, device="cuda", dtype=torch.float64, generator=gen, requires_grad=True)
    s = torch.randn(2, 3, device="cuda", dtype=torch.float64, generator=gen, requires_grad=True)
    a = torch.randn(2, 1, 4, 5, device="cuda", dtype=torch.float64, generator=gen, requires_grad=True)
    fn = lambda x, b, s, a: ba.bias_act(x, b, act="tanh", clamp=1.5, scale=s, addend=a, impl="cuda")  # noqa: E731
    torch.testing.assert_close(fn(x, b, s, a), ba.bias_act(x, b, act="tanh", clamp=1.5, scale=s, addend=a,
                                                           impl="ref"))
    assert torch.autograd.gradcheck(fn, (x, b, s, a))
    assert torch.autograd.gradgradcheck(fn, (x, b, s, a))


def test_inference_mode_and_requires_grad_without_grad_mode_fuse(spy):
    x = torch.randn(2, 4, 32, 32, device="cuda", requires_grad=True)
    s, a = torch.rand(2, 4, device="cuda"), torch.randn(32, 32, device="cuda")
    with torch.inference_mode():
        y1 = ba.bias_act(x.detach(), scale=s, addend=a, act="lrelu")
    with torch.no_grad():
        y2 = ba.bias_act(x, scale=s, addend=a, act="lrelu")
    assert len(spy) == 2 and not y2.requires_grad
    torch.testing.assert_close(y1, y2)


def test_plugin_rejects_bad_operands():
    """The C++ entry's own checks (the Python side normally prevents these). They raise instead of
    crashing: their messages format no integers (see check_bias in bias_act.cu)."""
    plugin = build.get_plugin()
    x = torch.randn(2, 3, 8, device="cuda")
    e = x.new_empty([0])
    with pytest.raises(RuntimeError, match="b must have shape"):
        plugin.bias_act_epilogue(x, torch.ones(2, device="cuda"), e, e, 0, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="unknown activation"):
        plugin.bias_act_epilogue(x, e, e, e, 42, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="need x of shape"):
        plugin.bias_act_epilogue(x[0, 0], e, e, e, 0, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="scale must have shape"):
        plugin.bias_act_epilogue(x, e, torch.ones(3, 2, device="cuda"), e, 0, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="scale must have x's dtype"):
        plugin.bias_act_epilogue(x, e, torch.ones(2, 3, device="cuda").half(), e, 0, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="addend must have shape"):
        plugin.bias_act_epilogue(x, e, e, torch.ones(2, 2, 8, device="cuda"), 0, 0.0, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="addend must be contiguous"):
        plugin.bias_act_epilogue(x, e, e, torch.ones(1, 8, 2, device="cuda").transpose(1, 2)[:, :1], 0, 0.0, 1.0,
                                 -1.0)
    with pytest.raises(RuntimeError, match="x must be contiguous"):
        plugin.bias_act_epilogue(x.transpose(1, 2), e, e, e, 0, 0.0, 1.0, -1.0)


# ---------------------------------------------------------------------------------------------
# Whole generator
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _ops_impl(impl):
    before = policy.get_config()["impl"]
    policy.configure(impl=impl)
    try:
        yield
    finally:
        policy.configure(impl=before)


@pytest.mark.parametrize("num_fp16_res", [0, 2])
@pytest.mark.parametrize("noise_mode", ["random", "const", "none"])
@pytest.mark.parametrize("batch", [1, 3])
def test_generator_cuda_matches_ref_under_no_grad(num_fp16_res, noise_mode, batch, spy):
    torch.manual_seed(0)
    G = Generator(z_dim=64, w_dim=64, img_resolution=64, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=2048, channel_max=64, num_fp16_res=num_fp16_res,
                                        conv_clamp=256 if num_fp16_res else None))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.add_(0.1 * torch.randn_like(p))
    G = G.eval().cuda()
    z = torch.randn(batch, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    out = {}
    with torch.no_grad(), no_tf32():
        ws = G.mapping(z, None)
        for impl in ("cuda", "ref"):
            with _ops_impl(impl):
                torch.manual_seed(7)  # same random noise for both
                out[impl] = G.synthesis(ws, noise_mode=noise_mode, fused_modconv=False)
                torch.manual_seed(7)
                out[impl + "-default"] = G.synthesis(ws, noise_mode=noise_mode)  # batch 1: fused modconv
    # Every SynthesisLayer (9) of the non-fused CUDA runs took the fused epilogue; batch 1 defaults
    # to the grouped-conv (fused_modconv) path, which applies noise itself.
    assert len(spy) == 9 * (1 if batch == 1 else 2)
    for key in ("", "-default"):
        cuda, ref = out["cuda" + key], out["ref" + key]
        assert cuda.shape == (batch, 3, 64, 64) and torch.isfinite(cuda).all()
        scale = 1 + float(ref.abs().max())
        diff = (cuda - ref).abs()
        if num_fp16_res == 0:
            assert float(diff.max()) <= 1e-3 * scale, key
        else:
            assert float(diff.mean()) <= 1e-2 * scale and float(diff.max()) <= 0.1 * scale, key
