"""The paper's video metrics (src/eval/paper_metrics.py) against their formulas: MS-SSIM against a
direct float64 implementation written here from Wang et al.'s definitions, shape and face ACD on
hand-checkable videos, the authors' frame reading and ArcFace crop on known pixels."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from src.eval.paper_metrics import (MS_SSIM_WEIGHTS, RecogniserFeatures, arcface_features, authors_frame_input,
                                    face_acd, ms_ssim, shape_acd, video_ms_ssim, written_uint8)

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
#: like the reference code, the implementation filters float32 images by FFT, which scipy runs in
#: single precision for float32 input: a local mean of squares (up to 255^2) is off by ~2^-24 * 255^2
#: ~ 4e-3, which moves a contrast term (variances against C2 = 58.5) by ~7e-5
FFT_TOLERANCE = 1e-4


def reference_ms_ssim(x: np.ndarray, y: np.ndarray, weights=MS_SSIM_WEIGHTS) -> float:
    """MS-SSIM from the formulas, float64 throughout, the local statistics as explicit window sums."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    scores = np.ones(len(x))
    for level, w in enumerate(weights):
        size = min(11, x.shape[1], x.shape[2])
        sigma = 1.5 * size / 11
        offsets = [i - (size - 1) / 2 for i in range(size)]
        g = np.array([[math.exp(-(a * a + b * b) / (2 * sigma * sigma)) for b in offsets] for a in offsets])
        g /= g.sum()

        def local_mean(img):  # 'valid' positions: every window that fits inside the image
            win = np.lib.stride_tricks.sliding_window_view(img, (size, size), axis=(1, 2))  # N,h,w,C,s,s
            return (win * g).sum(axis=(-1, -2))

        mx, my = local_mean(x), local_mean(y)
        vx, vy = local_mean(x * x) - mx ** 2, local_mean(y * y) - my ** 2
        cov = local_mean(x * y) - mx * my
        cs = (2 * cov + C2) / (vx + vy + C2)
        if level < len(weights) - 1:
            scores *= np.maximum(cs.mean(axis=(1, 2, 3)), 0) ** w
        else:
            ssim = (2 * mx * my + C1) / (mx ** 2 + my ** 2 + C1) * cs
            scores *= np.maximum(ssim.mean(axis=(1, 2, 3)), 0) ** w
        x, y = half(x), half(y)
    return float(scores.mean())


def half(img: np.ndarray) -> np.ndarray:
    """The mean of each 2x2 block; an odd last row or column is left out."""
    h, w = img.shape[1] // 2, img.shape[2] // 2
    return img[:, :2 * h, :2 * w].reshape(img.shape[0], h, 2, w, 2, img.shape[3]).mean(axis=(2, 4))


def noisy_pair(shape, noise: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape)
    b = np.clip(a + rng.integers(-noise, noise + 1, shape), 0, 255)
    return a.astype(np.uint8), b.astype(np.uint8)


def test_identical_images_score_one():
    a, _ = noisy_pair((2, 32, 32, 3), 0)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("shape,noise", [((2, 32, 40, 3), 20), ((3, 48, 32, 3), 60), ((1, 16, 16, 1), 5)])
def test_ms_ssim_matches_the_formulas(shape, noise):
    """Scales of 40 -> 20 -> 10 -> 5 -> 2 px use filters of 11, 11, 10, 5, 2 taps (even ones too;
    5 px is odd: its last column is left out, where the reference code would fail)."""
    a, b = noisy_pair(shape, noise)
    got, want = ms_ssim(a, b), reference_ms_ssim(a, b)
    assert 0.0 < want < 1.0
    assert got == pytest.approx(want, abs=FFT_TOLERANCE)


def test_ms_ssim_of_flat_images_is_the_luminance_term():
    """Flat images a and b: no variance, so every contrast term is C2 / C2 = 1 and SSIM is the
    luminance term (2ab + C1) / (a^2 + b^2 + C1) at every scale; only the last weight counts."""
    a = np.full((1, 32, 32, 3), 100, np.uint8)
    b = np.full((1, 32, 32, 3), 120, np.uint8)
    want = ((2 * 100 * 120 + C1) / (100 ** 2 + 120 ** 2 + C1)) ** MS_SSIM_WEIGHTS[-1]
    assert ms_ssim(a, b) == pytest.approx(want, abs=FFT_TOLERANCE)


def test_ms_ssim_averages_pairs_and_takes_tensors():
    a, b = noisy_pair((2, 32, 32, 3), 40)
    each = [ms_ssim(a[i:i + 1], b[i:i + 1]) for i in range(2)]
    assert ms_ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(sum(each) / 2, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        ms_ssim(a, b[:, :16])
    with pytest.raises(ValueError, match="16 px"):
        ms_ssim(a[:, :8], b[:, :8])


def test_written_uint8_truncates_like_the_authors_videos():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).reshape(1, 1, 1, 6).expand(1, 3, 1, 6)
    u8 = written_uint8(x)
    assert u8.shape == (1, 1, 6, 3) and u8.dtype == torch.uint8
    assert u8[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]  # 127.5 -> 127, 254.87 -> 254


def test_video_ms_ssim_is_one_for_a_still_video_and_the_mean_over_steps():
    torch.manual_seed(0)
    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    assert video_ms_ssim(frame.expand(4, 3, 32, 32)) == pytest.approx(1.0, abs=1e-12)
    video = torch.cat([frame, frame + 0.05 * torch.randn(1, 3, 32, 32), frame.flip(-1)])
    u8 = written_uint8(video).numpy()
    steps = [ms_ssim(u8[t:t + 1], u8[t + 1:t + 2]) for t in range(2)]
    assert video_ms_ssim(video) == pytest.approx(sum(steps) / 2, abs=1e-12)
    assert steps[0] > steps[1]  # a little noise is more alike than a mirrored face


def test_shape_acd_by_hand():
    """Channel means move by (10, 0, 0) and then by (0, 4, 3): L2 steps 10 and 5, mean 7.5."""
    frames = np.zeros((3, 2, 2, 3), np.uint8)
    frames[1:, :, :, 0] = 10
    frames[2, :, :, 1], frames[2, :, :, 2] = 4, 3
    assert shape_acd(frames) == pytest.approx(7.5, abs=1e-12)
    frames[1, 0, 0, 0] = 14  # one pixel of four: the mean of channel 0 moves by 1 more, then back
    assert shape_acd(frames) == pytest.approx((11 + math.sqrt(1 + 16 + 9)) / 2, abs=1e-12)
    with pytest.raises(ValueError):
        shape_acd(frames[:1])


def test_authors_frame_input_is_bgr_over_255_minus_half():
    rgb = np.zeros((2, 4, 5, 3), np.uint8)
    rgb[1, 2, 3] = (255, 0, 51)
    x = authors_frame_input(rgb)
    assert x.shape == (2, 3, 4, 5) and x.dtype == torch.float32
    assert x[1, :, 2, 3].tolist() == pytest.approx([51 / 255 - 0.5, -0.5, 0.5], abs=1e-7)
    assert x[0].eq(-0.5).all()


class Recorder(nn.Module):
    """A stand-in network: remembers its input, returns the channel means."""

    def forward(self, x):
        self.seen = x
        return x.mean(dim=(2, 3))


def test_arcface_features_pool_crop_and_pool_like_the_identity_loss():
    """A 128 px frame: area averaging to 256 repeats each pixel twice; rows 35:223 and columns 32:220
    are kept; averaging 188 -> 112 takes the mean of pixels floor(i*188/112) .. ceil((i+1)*188/112)-1."""
    torch.manual_seed(0)
    frame = torch.randn(1, 3, 128, 128, dtype=torch.float64)
    net = Recorder()
    arcface_features(frame, net)
    big = frame.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)[:, :, 35:223, 32:220]
    lo = [i * 188 // 112 for i in range(112)]
    hi = [-(-(i + 1) * 188 // 112) for i in range(112)]
    rows = torch.stack([big[:, :, a:b].mean(2) for a, b in zip(lo, hi)], dim=2)
    want = torch.stack([rows[:, :, :, a:b].mean(3) for a, b in zip(lo, hi)], dim=3)
    assert net.seen.shape == (1, 3, 112, 112)
    torch.testing.assert_close(net.seen, want, rtol=0, atol=1e-12)
    at256 = torch.randn(1, 3, 256, 200, dtype=torch.float64)  # 256 rows high: not resized first
    arcface_features(at256, net)
    torch.testing.assert_close(net.seen, torch.nn.functional.adaptive_avg_pool2d(at256[:, :, 35:223, 32:220], 112))


def test_face_acd_sums_squared_feature_steps():
    feats = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 2.0]])
    assert face_acd(np.zeros((3, 8, 8, 3), np.uint8), lambda frames: feats) == pytest.approx(1.0 + 4.0)


def test_face_acd_of_a_bare_network_reads_frames_as_the_authors_do():
    """A module is read as IR-SE50: BGR / 255 - 0.5, pooled to 256, cropped, pooled to 112. Channel
    means of frames of one colour are that colour in BGR, minus 0.5."""
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[1] = (255, 51, 0)  # RGB
    step = torch.tensor([0.0, 51.0, 255.0]) / 255  # frame 1 - frame 0, BGR
    assert face_acd(frames, Recorder()) == pytest.approx(float(step.pow(2).sum()), abs=1e-6)


def test_recogniser_features_read_rgb_in_minus_one_one():
    frames = np.full((2, 8, 8, 3), 255, np.uint8)
    frames[0, ..., 2] = 0
    net = Recorder()
    feats = RecogniserFeatures(net, "stand-in")(frames)
    torch.testing.assert_close(feats, torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, 1.0]]))
    assert face_acd(frames, RecogniserFeatures(net, "stand-in")) == pytest.approx(4.0)
