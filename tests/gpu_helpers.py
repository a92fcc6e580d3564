"""Shared by the GPU test modules: exact fp32 maths and a build policy that fails loudly.

Import ``strict_cuda_policy`` into a test module to make it apply there (autouse, module scope).
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from src.ops import policy


@contextlib.contextmanager
def no_tf32():
    """Exact fp32 convs and matmuls, so that cuda-vs-ref differences are only the ops' own."""
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


@pytest.fixture(autouse=True, scope="module")
def strict_cuda_policy():
    """impl='auto' with on_build_failure='error': a failed kernel build must fail the tests."""
    policy.reset()
    policy.configure(impl="auto", on_build_failure="error")
    yield
    policy.reset()


def small_cuda_generator(num_fp16_res: int):
    """A frozen 128 px generator on the GPU with ``num_fp16_res`` half-precision resolutions, and the
    W+ latents of 4 seeded faces: (G, ws)."""
    from src.stylegan import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=64, c_dim=0, w_dim=64, img_resolution=128, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=4096, channel_max=128, num_fp16_res=num_fp16_res, conv_clamp=256))
    G = G.eval().requires_grad_(False).cuda()
    ws = G.mapping(torch.randn(4, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1)), None)
    return G, ws


#: tolerances of a CUDA op against another computation of the same values, per dtype
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float16: dict(atol=2e-2, rtol=2e-2),
       torch.bfloat16: dict(atol=1e-1, rtol=5e-2), torch.float64: dict(atol=1e-10, rtol=1e-10)}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def close(a, b, dtype, scale=1.0):
    """assert_close with ``dtype``'s tolerance, its absolute part times ``scale`` (the values' size)."""
    tol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), atol=tol["atol"] * scale, rtol=tol["rtol"])
