"""Channels-last activations in the generator's fp16 blocks switched on at run time
(``SynthesisNetwork.set_channels_last``, ``FaceAnimator.use_channels_last``, animate.py
``channels_last=true``, ``model.train.generator_channels_last``): which blocks it reaches, that the
activations are NHWC there, that images stay within half-precision rounding, that graphs see the
setting and that a CPU's fp32 frames do not change. The half blocks run on CUDA only; here the CPU
is let in, in bfloat16 (tests/test_channels_last_gpu.py checks fp16 on a GPU)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from src.stylegan import Generator, layers
from tests.test_half_dtype import generator  # 32 px, its top two resolutions in half precision

pytestmark = pytest.mark.usefixtures("one_thread")
EMBEDDED = Path(__file__).resolve().parents[1] / "assets" / "animator_synthetic.safetensors"
CL = torch.channels_last


def test_the_switch_reaches_the_half_blocks_only_and_runs_them_nhwc(monkeypatch):
    monkeypatch.setattr(layers, "FP16_DEVICE_TYPES", {"cuda", "cpu"})
    G = generator()
    S = G.synthesis.set_half_dtype(torch.bfloat16)
    ws = G.mapping(torch.randn(3, 32, generator=torch.Generator().manual_seed(1)), None)
    ref = S(ws, noise_mode="const")
    assert not S.channels_last
    assert S.set_channels_last() is S and S.channels_last
    assert {res: S.__getattr__(f"b{res}").channels_last for res in S.block_resolutions} == \
        {4: False, 8: False, 16: True, 32: True}  # the top two resolutions are the half ones
    layouts = []
    for res in (8, 32):
        S.__getattr__(f"b{res}").conv1.register_forward_hook(
            lambda m, args, out: layouts.append(out.is_contiguous(memory_format=CL) and not out.is_contiguous()))
    img = S(ws, noise_mode="const")
    assert layouts == [False, True]
    assert img.is_contiguous() and img.dtype == torch.float32
    err = float((img - ref).abs().max() / ref.abs().max())
    assert err < 2e-2  # the same bf16 arithmetic in another order: a few bf16 steps (2^-8) at most
    S.set_channels_last(False)
    assert not S.channels_last and torch.equal(S(ws, noise_mode="const"), ref)


def test_fp32_generators_and_cpus_are_untouched():
    G = generator()
    ws = G.mapping(torch.randn(2, 32, generator=torch.Generator().manual_seed(2)), None)
    ref = G.synthesis(ws, noise_mode="const")  # on a CPU the half blocks compute in fp32, NCHW
    assert torch.equal(G.synthesis.set_channels_last(True)(ws, noise_mode="const"), ref)
    fp32 = Generator(z_dim=32, c_dim=0, w_dim=32, img_resolution=32, img_channels=3,
                     synthesis_kwargs=dict(channel_base=512, channel_max=32, num_fp16_res=0))
    assert not fp32.synthesis.set_channels_last(True).channels_last  # no half blocks: nothing to switch


def test_the_pipeline_option_keeps_cpu_frames_and_names_the_layout_to_its_graphs():
    from src.pipeline import FaceAnimator

    plain = FaceAnimator.from_pretrained(EMBEDDED, channels_last=False)
    nhwc = FaceAnimator.from_pretrained(EMBEDDED, channels_last=True)
    assert nhwc.generator.synthesis.channels_last and not plain.generator.synthesis.channels_last
    state = nhwc.graph_state()
    assert state[-1] is True and plain.graph_state()[-1] is False  # graphs are dropped when the layout changes
    ws = plain.sample_latents(seeds=[3])
    with torch.no_grad():
        a = plain.animate(ws, ["The person is winking."], num_frames=3)["frames"]
        b = nhwc.animate(ws, ["The person is winking."], num_frames=3)["frames"]
    assert torch.equal(a, b)
    assert nhwc.use_channels_last(False) is nhwc and nhwc.graph_state() == state[:-1] + (False,)


def test_the_training_setting_reaches_the_frozen_generator():
    from src.stylegan import Generator as G_
    from tests.test_animator_system import build

    def half_generator():  # tiny_generator's shape with its top resolution in half precision
        torch.manual_seed(0)
        return G_(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=128, channel_max=16, num_fp16_res=1, conv_clamp=256)).eval()

    assert build("ours", generator=half_generator(), generator_channels_last=True).generator.synthesis.channels_last
    assert build("ours", generator=half_generator()).generator.synthesis.channels_last  # the default
    assert not build("ours", generator=half_generator(), generator_channels_last=False).generator.synthesis.channels_last
