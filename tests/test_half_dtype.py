"""The generator's half-precision blocks in bfloat16 (``SynthesisNetwork.set_half_dtype``): they
compute in it, the image stays close to fp32's, the pipeline's graphs see the setting, bad dtypes
are one line. The blocks run in half precision on CUDA only; here the CPU is let in for the test."""
from __future__ import annotations

import pytest
import torch

from src.stylegan import Generator, layers
from src.utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def half_on_cpu(monkeypatch):
    monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda", "cpu"})


def generator() -> Generator:
    torch.manual_seed(0)
    G = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=2, conv_clamp=256))
    return G.eval().requires_grad_(False)


def test_bf16_blocks_compute_in_bf16_and_stay_close_to_fp32(half_on_cpu):
    G = generator()
    ws = G.mapping(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), None)
    seen = []
    G.synthesis.b32.conv1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    G.synthesis.b8.conv1.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    ref = G.synthesis(ws, noise_mode="const", force_fp32=True)
    assert G.synthesis.set_half_dtype(torch.bfloat16) is G.synthesis and G.synthesis.half_dtype == torch.bfloat16
    seen.clear()
    img = G.synthesis(ws, noise_mode="const")
    assert seen == [torch.float32, torch.bfloat16]  # 8 px in fp32, the top two resolutions in bf16
    assert img.dtype == torch.float32 and torch.isfinite(img).all()
    err = float((img - ref).abs().max() / ref.abs().max())
    assert 0 < err < 5e-2  # bf16 keeps 8 bits of mantissa


def test_bad_half_dtype_is_one_line():
    with pytest.raises(UserError, match="float16 or bfloat16"):
        generator().synthesis.set_half_dtype(torch.float32)


def test_the_pipeline_graph_state_names_the_half_dtype():
    from tests.test_animator_system import build

    pipe = build("ours").pipeline
    before = pipe.graph_state()
    pipe.generator.synthesis.set_half_dtype(torch.bfloat16)
    assert pipe.graph_state() != before  # recorded graphs are dropped, not replayed in the old dtype


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_blocks_on_the_gpu_with_the_cuda_ops():
    from tests.gpu_helpers import small_cuda_generator

    G, ws = small_cuda_generator(num_fp16_res=3)
    with torch.no_grad():
        ref = G.synthesis(ws, noise_mode="const", force_fp32=True)
        half = G.synthesis(ws, noise_mode="const")
        G.synthesis.set_half_dtype(torch.bfloat16)
        bf16 = G.synthesis(ws, noise_mode="const")
    for img in (half, bf16):
        assert torch.isfinite(img).all() and float((img - ref).abs().max() / ref.abs().max()) < 5e-2
    assert not torch.equal(half, bf16)
