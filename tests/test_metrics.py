"""Evaluation metrics on synthetic videos with known answers."""
from __future__ import annotations

import math

import pytest
import torch

from src.identity.metrics import identity_drift
from src.eval.metrics import (ClipFrechetDistance, frame0_psnr, smoothness, text_alignment,
                              video_metrics)
from src.utils.errors import UserError


def constant_video(n=2, t=6, value=0.3):
    return torch.full((n, t, 3, 8, 8), value)


def brightness_video(levels):
    """One video whose frame t is a flat image of brightness levels[t]: [1,T,3,4,4]."""
    return torch.tensor(levels, dtype=torch.float32).view(1, -1, 1, 1, 1).expand(1, len(levels), 3, 4, 4).clone()


class ColourClip:
    """Image embedding = one-hot of the brightest channel; text embedding = one-hot of a keyword."""

    embed_dim = 3
    words = ("red", "green", "blue")

    def encode_image(self, img):
        return torch.nn.functional.one_hot(img.mean(dim=(2, 3)).argmax(1), 3).float()

    def encode_text(self, texts):
        return torch.stack([torch.nn.functional.one_hot(torch.tensor(
            [w in t for w in self.words].index(True)), 3).float() for t in texts])


def test_constant_video_has_zero_smoothness_and_drift():
    v = constant_video()
    ws = torch.ones(2, 6, 3, 4)
    s = smoothness(v, ws)
    assert s == {"pixel_jerk": 0.0, "flicker": 0.0, "brightness_step": 0.0, "latent_jerk": 0.0}
    d = identity_drift(v, lambda x: x.flatten(1))
    assert d == {"id_drift": 0.0, "id_drift_max": 0.0, "acd": 0.0}


def test_jump_has_larger_flicker_than_a_fade():
    fade = brightness_video([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    jump = brightness_video([0.0, 0.0, 0.0, 0.5, 0.5, 0.5])
    assert smoothness(fade)["flicker"] == pytest.approx(0.0, abs=1e-7)
    assert smoothness(jump)["flicker"] == pytest.approx((0.5 + 0.5) / 4)  # second differences 0, .5, -.5, 0
    assert smoothness(jump)["pixel_jerk"] > smoothness(fade)["pixel_jerk"]
    assert smoothness(fade)["brightness_step"] == pytest.approx(0.1)


def test_identity_drift_by_hand():
    v = brightness_video([0.0, 1.0, 3.0])
    d = identity_drift(v, lambda x: x.mean(dim=(1, 2, 3))[:, None])
    assert d["id_drift"] == pytest.approx((1 + 3) / 2)
    assert d["id_drift_max"] == pytest.approx(3.0)
    assert d["acd"] == pytest.approx((1 + 4) / 2)


def test_frame0_psnr_by_hand():
    image = torch.zeros(1, 3, 4, 4)
    frames = torch.full((1, 3, 3, 4, 4), 0.2)  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    assert frame0_psnr(frames, image)["frame0_psnr"] == pytest.approx(20.0, rel=1e-5)
    assert frame0_psnr(torch.zeros(1, 2, 3, 4, 4), image)["frame0_psnr"] == 100.0  # identical: capped


def test_text_alignment_top1_and_score():
    clip = ColourClip()
    prompts = ["a red face", "a green face", "a blue face"]
    frames = torch.full((2, 2, 3, 4, 4), -1.0)
    frames[0, -1, 0] = 1.0  # last frame of video 0 is red
    frames[1, -1, 2] = 1.0  # last frame of video 1 is blue
    good = text_alignment(clip, frames, [prompts[0], prompts[2]], prompts)
    assert good == {"clip_score": 1.0, "text_top1": 1.0}
    half = text_alignment(clip, frames, [prompts[0], prompts[1]], prompts)
    assert half == {"clip_score": 0.5, "text_top1": 0.5}
    with pytest.raises(UserError, match="not in the prompt list"):
        text_alignment(clip, frames, ["a pink face", prompts[0]], prompts)


def test_video_metrics_combines_everything():
    v = constant_video(n=1, t=4)
    out = video_metrics(v, ws=torch.zeros(1, 4, 2, 2), image=v[:, 0], clip=ColourClip(),
                        prompts=["a red face"], prompt_list=["a red face", "a blue face"],
                        identity_fn=lambda x: x.flatten(1), identity_prefix="clip_")
    assert {"pixel_jerk", "flicker", "latent_jerk", "frame0_psnr", "clip_score", "text_top1",
            "clip_id_drift", "clip_acd"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())


def test_clip_frechet_distance():
    from tests.test_animator import tiny_clip_model
    from src.networks.clip_encoder import ClipEncoder

    clip = ClipEncoder(tiny_clip_model())
    g = torch.Generator().manual_seed(0)
    a = torch.rand(24, 3, 16, 16, generator=g) * 2 - 1
    b = (torch.rand(24, 3, 16, 16, generator=g) * 0.2 + 0.7)  # bright, low-contrast images
    fd = ClipFrechetDistance(clip)
    fd.update(a, real=True)
    fd.update(a, real=False)
    same = fd.compute()["clip_fd"]
    fd.reset()
    fd.update(a, real=True)
    fd.update(b, real=False)
    different = fd.compute()["clip_fd"]
    assert abs(same) < 1e-6 and different > 0.01 and math.isfinite(different)
