"""The one-forward-pass identity Jacobian (src/pipeline/jacobian.py) against autograd's."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.identity.projection import identity_jacobian as autograd_jacobian
from src.pipeline.jacobian import SynthesisTape, _upfirdn_adjoint, identity_jacobian, supports
from src.ops import upfirdn2d
from tests.fixtures_stylegan import tiny_generator


def _reader(a=5, res=32, seed=0):
    """A small nonlinear reader: images [M, 3, res, res] -> [M, a]."""
    g = torch.Generator().manual_seed(seed)
    conv = torch.randn(8, 3, 3, 3, generator=g) * 0.3
    head = torch.randn(a, 8 * (res // 4) ** 2, generator=g) * 0.05
    return lambda img: torch.tanh(F.conv2d(img, conv, stride=4, padding=1)).flatten(1) @ head.T


@pytest.mark.parametrize("up,down,p0,p1,size", [(1, 1, 1, 1, 9), (2, 1, 2, 1, 8), (1, 2, 1, 1, 10)])
def test_upfirdn_adjoint_is_the_transpose(up, down, p0, p1, size):
    f = upfirdn2d.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    y = upfirdn2d.upfirdn2d(x, f.double(), up=up, down=down, padding=[p0, p1, p0, p1], gain=up * up)
    g = torch.randn_like(y)
    (want,) = torch.autograd.grad(y, x, g)
    got = _upfirdn_adjoint(g, f.double(), up, down, p0, p1, size, up * up)
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("noise_mode,clamp", [("const", 256), ("none", None), ("const", 0.05)])
def test_tape_jacobian_equals_autograd(noise_mode, clamp):
    G = tiny_generator(res=32, conv_clamp=clamp)
    S = G.synthesis
    assert supports(S, noise_mode, torch.device("cpu"))
    w = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(3)), None)
    w = w + 0.2 * torch.randn(w.shape, generator=torch.Generator().manual_seed(4))  # distinct layers
    reader = _reader()
    tape = SynthesisTape(S, w, noise_mode)
    with torch.no_grad():
        assert torch.allclose(tape.image, S(w, noise_mode=noise_mode), atol=1e-6)
    mask = torch.zeros(S.num_ws, 1)
    mask[: S.num_ws - 2] = 1.0
    want, readings = autograd_jacobian(lambda ws: S(ws, noise_mode=noise_mode), reader, w, mask)
    got, got_readings = identity_jacobian(S, reader, w, mask, noise_mode, chunk=2, tape=tape)
    assert torch.equal(got_readings, readings)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    # rows no face shows are left zero, the others unchanged
    hide = lambda r: torch.arange(r.shape[1]).expand_as(r) != 1  # noqa: E731
    part, _ = identity_jacobian(S, reader, w, mask, noise_mode, tape=tape, shown=hide)
    assert torch.equal(part[:, 1], torch.zeros_like(part[:, 1]))
    assert torch.allclose(part[:, [0, 2, 3, 4]], got[:, [0, 2, 3, 4]], atol=1e-7)


def test_unsupported_generators_are_refused():
    G = tiny_generator(res=32)
    assert not supports(G.synthesis, "random", torch.device("cpu"))
    resnet = tiny_generator(res=32, architecture="resnet")
    assert not supports(resnet.synthesis, "const", torch.device("cpu"))
    fp16 = tiny_generator(res=32, num_fp16_res=2)
    assert supports(fp16.synthesis, "const", torch.device("cpu"))  # a CPU runs every block in fp32
    assert not supports(G.synthesis, "const", torch.device("cuda"))  # a GPU keeps autograd's


@pytest.mark.slow
def test_embedded_default_jacobian_equals_autograd():
    from tests.conftest import ROOT
    from src.pipeline import FaceAnimator

    pipe = FaceAnimator.from_pretrained(ROOT / "assets" / "animator_synthetic.safetensors")
    w = pipe.sample_latents(1, seed=2)
    tape = pipe.synthesis_tape(w)
    assert tape is not None
    got, shown = pipe.identity_jacobian(w, tape=tape)
    reader = pipe.projection_reader()
    render = lambda ws: pipe.generator.synthesis(ws, noise_mode=pipe.noise_mode)  # noqa: E731
    want, readings = autograd_jacobian(render, reader, w, pipe.animator.layer_mask)
    assert torch.equal(shown, reader.shown(readings))
    rows = shown[0]
    assert (got[0, rows] - want[0, rows]).norm() <= 1e-4 * want[0, rows].norm()  # float32 rounding
    assert torch.equal(got[0, ~rows], torch.zeros_like(got[0, ~rows]))
    # several faces go one at a time: each gets the Jacobian it gets alone
    both, both_shown = pipe.identity_jacobian(torch.cat([w, pipe.sample_latents(1, seed=3)]))
    assert torch.equal(both[:1], got) and torch.equal(both_shown[:1], shown)
