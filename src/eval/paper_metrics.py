"""The paper's video metrics, defined as the authors' evaluation code computes them.

* :func:`ms_ssim`: multi-scale SSIM of the Progressive-GAN metrics (NHWC images in [0, 255], 'valid'
  Gaussian filtering by FFT, 2x2 box downsampling, five levels), per image pair, averaged at the end.
* :func:`video_ms_ssim`: that MS-SSIM between consecutive frames of one video: temporal consistency
  (1 for a still video, lower the more each frame differs from the one before).
* :func:`shape_acd`: MoCoGAN's average content distance of pixel sums: how far the per-channel mean
  colour moves from one frame to the next.
* :func:`face_acd`: the summed squared distance of face-recognition features between consecutive frames.
  With IR-SE50 (ArcFace) the frames are read the way the authors read their videos back (OpenCV:
  BGR, /255 - 0.5) and cropped as their identity loss crops them (:func:`arcface_features`).

The authors score decoded uint8 frames of written videos: :func:`written_uint8` turns frames in
[-1, 1] into the uint8 frames they write (clamp, scale, truncate), so that the same frames give the
same numbers. Pure functions of arrays and tensors; no files, no configs.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: the MS-SSIM weights of Wang et al. 2003 (five scales; they sum to 1.0001, as in the reference code)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _as_array(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    """A normalised size x size Gaussian, float64, centred on the window (half-pixel offsets for an
    even size)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim_and_contrast(img1: np.ndarray, img2: np.ndarray, max_val: float = 255, filter_size: int = 11,
                      filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """SSIM and contrast-structure term of each image pair of NHWC float images: two arrays [N].

    The filter shrinks to min(filter_size, H, W) with sigma scaled alike; local statistics are
    'valid' Gaussian filterings (no padding); SSIM and the contrast term are averaged over positions
    and channels. filter_size 0: no filtering (pixel-wise statistics)."""
    from scipy.signal import fftconvolve

    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    if filter_size:
        window = gaussian_window(size, size * filter_sigma / filter_size)[None, :, :, None]

        def blur(x):
            return fftconvolve(x, window, mode="valid")
    else:
        def blur(x):
            return x
    mu1, mu2 = blur(img1), blur(img2)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    var1 = blur(img1 * img1) - mu11
    var2 = blur(img2 * img2) - mu22
    cov = blur(img1 * img2) - mu12
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1, v2 = 2.0 * cov + c2, var1 + var2 + c2
    ssim = ((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2)
    return ssim.mean(axis=(1, 2, 3)), (v1 / v2).mean(axis=(1, 2, 3))


def box_downsample(img: np.ndarray) -> np.ndarray:
    """NHWC -> half the height and width: the mean of each 2x2 block (an odd last row/column is
    dropped)."""
    h, w = img.shape[1] // 2 * 2, img.shape[2] // 2 * 2
    img = img[:, :h, :w]
    return (img[:, 0::2, 0::2] + img[:, 1::2, 0::2] + img[:, 0::2, 1::2] + img[:, 1::2, 1::2]) * 0.25


def ms_ssim(img1, img2, max_val: float = 255, filter_size: int = 11, filter_sigma: float = 1.5,
            k1: float = 0.01, k2: float = 0.03, weights: Optional[Sequence[float]] = None) -> float:
    """Multi-scale SSIM of image pairs img1, img2 [N,H,W,C] in [0, max_val] (arrays or tensors),
    averaged over the N pairs.

    Per pair: SSIM and contrast terms at len(weights) scales (each scale half the previous by 2x2
    box averaging), clipped to >= 0; the score is prod_{s<last} cs_s^w_s * ssim_last^w_last. Images
    are taken as float32, as the reference code does; the filtering runs in float64."""
    a, b = _as_array(img1), _as_array(img2)
    if a.shape != b.shape:
        raise ValueError(f"ms_ssim: images must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim != 4:
        raise ValueError(f"ms_ssim: images must be [N, H, W, C], got {a.ndim} dimensions")
    w = np.asarray(weights if weights else MS_SSIM_WEIGHTS, dtype=np.float64)
    if min(a.shape[1:3]) < 2 ** (w.size - 1):
        raise ValueError(f"ms_ssim: {w.size} scales need images of at least {2 ** (w.size - 1)} px, got {a.shape[1:3]}")
    a, b = a.astype(np.float32), b.astype(np.float32)
    ssims, contrasts = [], []
    for _ in range(w.size):
        s, cs = ssim_and_contrast(a, b, max_val, filter_size, filter_sigma, k1, k2)
        ssims.append(s)
        contrasts.append(cs)
        a, b = box_downsample(a), box_downsample(b)
    ssims = np.clip(np.asarray(ssims), 0.0, np.inf)
    contrasts = np.clip(np.asarray(contrasts), 0.0, np.inf)
    per_pair = np.prod(contrasts[:-1] ** w[:-1, None], axis=0) * ssims[-1] ** w[-1]
    return float(np.mean(per_pair))


def written_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames [T,3,H,W] in [-1,1] -> the uint8 frames [T,H,W,3] the authors write to their videos:
    clamp to [-1, 1], (x + 1) / 2 * 255 in float32, truncated to an integer."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"expected frames [T,3,H,W], got {tuple(frames.shape)}")
    x = frames.detach().float().cpu().clamp(-1.0, 1.0)
    return ((x + 1.0) / 2.0 * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def video_ms_ssim(frames: torch.Tensor) -> float:
    """Temporal consistency of one video [T,3,H,W] in [-1,1] (T >= 2): the mean MS-SSIM of each
    written frame with the next one (1 = a still video; a face that changes more between frames
    scores lower)."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"video_ms_ssim needs frames [T>=2,3,H,W], got {tuple(frames.shape)}")
    u8 = written_uint8(frames).numpy()
    return ms_ssim(u8[:-1], u8[1:])


def shape_acd(frames_uint8) -> float:
    """MoCoGAN's shape ACD of one video, decoded frames [T,H,W,C] (integers, T >= 2): the L2 norm over
    channels of the change of each channel's pixel sum from one frame to the next, divided by the
    pixel count H*W, averaged over the T-1 steps. Channel order does not matter (RGB or BGR)."""
    x = _as_array(frames_uint8)
    if x.ndim != 4 or x.shape[0] < 2:
        raise ValueError(f"shape_acd needs frames [T>=2,H,W,C], got {x.shape}")
    sums = x.astype(np.int64).sum(axis=(1, 2))  # [T, C], exact
    steps = np.diff(sums, axis=0) / float(x.shape[1] * x.shape[2])
    return float(np.mean(np.linalg.norm(steps, axis=1)))


def authors_frame_input(frames_uint8_rgb) -> torch.Tensor:
    """Decoded RGB frames [T,H,W,3] uint8 -> what the authors' face ACD feeds to ArcFace: the frame as
    OpenCV reads it (BGR) / 255 - 0.5 in float64, then float32, [T,3,H,W] in [-0.5, 0.5]."""
    x = torch.as_tensor(_as_array(frames_uint8_rgb))
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected RGB frames [T,H,W,3], got {tuple(x.shape)}")
    bgr = x.flip(-1).to(torch.float64) / 255.0 - 0.5
    return bgr.permute(0, 3, 1, 2).float().contiguous()


def arcface_features(x: torch.Tensor, net: nn.Module) -> torch.Tensor:
    """The authors' identity-loss features of images x [N,3,H,W]: area-averaged to 256 x 256 unless
    already 256 rows high, rows 35:223 and columns 32:220 kept, area-averaged to 112 x 112, IR-SE50."""
    if x.shape[2] != 256:
        x = F.adaptive_avg_pool2d(x, (256, 256))
    return net(F.adaptive_avg_pool2d(x[:, :, 35:223, 32:220], (112, 112)))


def _net_device(net: nn.Module) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


class ArcFaceFeatures:
    """IR-SE50 features of decoded RGB uint8 frames [T,H,W,3], exactly as the authors' face ACD takes
    them (:func:`authors_frame_input`, then :func:`arcface_features`). ``name`` says which network."""

    def __init__(self, net: nn.Module, name: str = "IR-SE50 ArcFace"):
        self.net, self.name = net.eval(), name

    @torch.no_grad()
    def __call__(self, frames_uint8) -> torch.Tensor:
        return arcface_features(authors_frame_input(frames_uint8).to(_net_device(self.net)), self.net).float()


class RecogniserFeatures:
    """Features of decoded RGB uint8 frames [T,H,W,3] by a face recogniser that reads RGB frames in
    [-1, 1] whole (the embedded domain's, ``src.embedded.face_id``). ``name`` says which network."""

    def __init__(self, net: nn.Module, name: str):
        self.net, self.name = net.eval(), name

    @torch.no_grad()
    def __call__(self, frames_uint8) -> torch.Tensor:
        x = torch.as_tensor(_as_array(frames_uint8)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return self.net(x.to(_net_device(self.net))).float()


FaceFeatures = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def face_acd(frames_uint8, facenet: FaceFeatures | nn.Module) -> float:
    """Face ACD of one video, decoded RGB frames [T,H,W,3] uint8 (T >= 2): the squared differences of
    the features f_t of consecutive frames, summed over the T-1 pairs and the feature dimensions
    (``F.mse_loss(f[1:], f[:-1], reduction='sum')``). facenet: a callable frames -> features [T, D]
    (:class:`ArcFaceFeatures`, :class:`RecogniserFeatures`) or a bare IR-SE50 module, read as the
    authors read it. A corpus's face ACD is the mean over its videos."""
    features = (ArcFaceFeatures(facenet) if isinstance(facenet, nn.Module) else facenet)(frames_uint8)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"face_acd needs features [T>=2, D] of T >= 2 frames, got {tuple(features.shape)}")
    return float(F.mse_loss(features[1:], features[:-1], reduction="sum"))
