"""GPU checks: whole generator with the CUDA ops vs the reference ops (256 and 1024 px, random
weights, fp32 and fp16 top layers), fp16 vs fp32 agreement, and the discriminator incl. R1."""
from __future__ import annotations

import contextlib

import pytest
import torch

import src.ops
from src.stylegan import Discriminator, Generator
from tests.gpu_helpers import no_tf32

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@contextlib.contextmanager
def ops_impl(impl):
    before = src.ops.get_config()["impl"]
    src.ops.configure(impl=impl)
    try:
        yield
    finally:
        src.ops.configure(impl=before)


def _config_f(res, num_fp16_res, **kw):
    torch.manual_seed(0)
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=dict(channel_base=32768, channel_max=512, num_fp16_res=num_fp16_res,
                                        conv_clamp=256 if num_fp16_res else None, **kw))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("bias") or name.endswith("noise_strength"):
                p.add_(0.1 * torch.randn_like(p))
    return G.eval().cuda()


@pytest.mark.slow
@pytest.mark.parametrize("res", [256, 1024])
@pytest.mark.parametrize("num_fp16_res", [0, 4])
def test_generator_cuda_ops_match_ref(res, num_fp16_res):
    G = _config_f(res, num_fp16_res)
    z = torch.randn(2, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad(), no_tf32():
        ws = G.mapping(z, None, truncation_psi=0.7)
        with ops_impl("cuda"):
            cuda = G.synthesis(ws, noise_mode="const")
        with ops_impl("ref"):
            ref = G.synthesis(ws, noise_mode="const")
    assert cuda.shape == (2, 3, res, res) and cuda.dtype == torch.float32
    assert torch.isfinite(cuda).all()
    scale = 1 + float(ref.abs().max())
    diff = (cuda - ref).abs()
    if num_fp16_res == 0:
        assert float(diff.max()) <= 1e-3 * scale
    else:
        assert float(diff.mean()) <= 1e-2 * scale and float(diff.max()) <= 0.1 * scale


@pytest.mark.slow
def test_fp16_top_layers_close_to_fp32():
    G = _config_f(256, 4)
    z = torch.randn(4, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    with torch.no_grad():
        ws = G.mapping(z, None)
        a = G.synthesis(ws, noise_mode="const")
        b = G.synthesis(ws, noise_mode="const", force_fp32=True)
        c = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    corr = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
    assert corr > 0.99
    assert float((a - c).abs().mean()) <= 1e-2 * (1 + float(b.abs().max()))


def test_channels_last_option_matches():
    G = _config_f(64, 2)
    torch.manual_seed(0)
    G_cl = Generator(**G.init_kwargs | {"synthesis_kwargs": dict(G.init_kwargs["synthesis_kwargs"],
                                                                 fp16_channels_last=True)}).cuda().eval()
    G_cl.load_state_dict(G.state_dict())
    ws = G.mapping(torch.randn(3, 512, device="cuda"), None)
    with torch.no_grad():
        a, b = G.synthesis(ws, noise_mode="const"), G_cl.synthesis(ws, noise_mode="const")
    assert float((a - b).abs().mean()) <= 1e-2 * (1 + float(a.abs().max()))


@pytest.mark.parametrize("num_fp16_res", [0, 4])
def test_discriminator_r1_double_backward_cuda_vs_ref(num_fp16_res):
    torch.manual_seed(0)
    D = Discriminator(c_dim=0, img_resolution=64, img_channels=3, architecture="resnet", channel_base=4096,
                      channel_max=128, num_fp16_res=num_fp16_res, conv_clamp=256 if num_fp16_res else None).cuda()
    img0 = torch.randn(4, 3, 64, 64, device="cuda")
    results = {}
    for impl in ("cuda", "ref"):
        with ops_impl(impl), no_tf32():
            D.zero_grad(set_to_none=True)
            img = img0.clone().requires_grad_(True)
            logits = D(img, None)
            (grad,) = torch.autograd.grad(logits.sum(), img, create_graph=True)
            r1 = grad.square().sum([1, 2, 3]).mean()
            (r1 + logits.mean()).backward()
            results[impl] = (logits.detach(), r1.detach(), D.b64.conv0.weight.grad.clone(), D.b4.fc.weight.grad.clone())
    for a, b in zip(results["cuda"], results["ref"]):
        assert torch.isfinite(a).all()
        tol = 1e-3 if num_fp16_res == 0 else 5e-2
        assert float((a - b).abs().max()) <= tol * (1 + float(b.abs().max()))
