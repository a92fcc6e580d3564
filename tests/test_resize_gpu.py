"""GPU: under deterministic algorithms the CLIP/LPIPS resizes run (F.interpolate's CUDA backward
would raise) and give bit-identical gradients run after run."""
from __future__ import annotations

import pytest
import torch

from src.ops.resize import resize

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def deterministic(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic", "area"])
def test_deterministic_backward_on_cuda(deterministic, mode):
    aa = mode != "area"
    x = torch.randn(4, 3, 128, 128, device="cuda", requires_grad=True)
    grad_out = torch.randn(4, 3, 224 if aa else 112, 224 if aa else 112, device="cuda")
    grads = []
    for _ in range(2):
        (g,) = torch.autograd.grad(resize(x, grad_out.shape[-2:], mode, antialias=aa), x, grad_out)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])
    torch.use_deterministic_algorithms(False)
    xd = x.detach().double().requires_grad_(True)
    ref = resize(xd, grad_out.shape[-2:], mode, antialias=aa, deterministic=False)  # F.interpolate / pooling
    (g_ref,) = torch.autograd.grad(ref, xd, grad_out.double())
    torch.testing.assert_close(grads[0].double(), g_ref, rtol=1e-4, atol=1e-5)
