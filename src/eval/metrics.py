"""Evaluation metrics for generated face animations. Every function returns a plain dict of floats.

Shapes: N videos, T frames, frames [N,T,3,H,W] in [-1,1], latents [N,T,L,C].

Per video (averaged over the N videos):
* text alignment: cosine of the last frame's CLIP image embedding with its own prompt
  (``clip_score``) and top-1 accuracy of the own prompt among the domain's prompt list (``text_top1``);
* identity drift: with e_t = identity_fn(frame_t), ``id_drift`` = mean_{t>=1} |e_t - e_0|_2,
  ``id_drift_max`` = mean over videos of max_t |e_t - e_0|_2, ``acd`` = mean_t |e_{t+1} - e_t|_2^2
  (average content distance between consecutive frames, as in MoCoGAN / the paper's code);
* smoothness: ``pixel_jerk`` = mean |x_{t+2} - 2 x_{t+1} + x_t| (pixels), ``latent_jerk`` the same
  on the latents, ``flicker`` = mean |b_{t+2} - 2 b_{t+1} + b_t| with b_t the mean brightness of
  frame t (a steady fade scores 0, a sudden jump scores high), ``brightness_step`` = mean |b_{t+1} - b_t|;
* ``frame0_psnr``: PSNR of frame 0 against the input image (peak-to-peak 2 for [-1,1] images).
Per corpus: :class:`ClipFrechetDistance`, the Frechet distance of CLIP image features
(torchmetrics' FrechetInceptionDistance with a custom feature extractor).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from src.data.prompts import distinct_in_order
from src.identity.metrics import identity_drift
from src.utils.errors import UserError


def _check_video(frames: torch.Tensor) -> None:
    if frames.ndim != 5 or frames.shape[2] != 3:
        raise ValueError(f"expected frames [N,T,3,H,W], got {tuple(frames.shape)}")


@torch.no_grad()
def text_alignment(clip, frames: torch.Tensor, prompts: Sequence[str],
                   prompt_list: Optional[Sequence[str]] = None) -> dict[str, float]:
    """CLIP score of each video's last frame with its prompt and top-1 accuracy among ``prompt_list``.

    clip: object with encode_image(img [M,3,H,W]) / encode_text(list[str]) -> unit-norm [M,D].
    frames [N,T,3,H,W]; prompts: N prompts; prompt_list: the candidates (default: the distinct prompts).
    """
    _check_video(frames)
    if len(prompts) != frames.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {frames.shape[0]} videos")
    candidates = distinct_in_order(prompt_list if prompt_list is not None else prompts)
    missing = [p for p in prompts if p not in candidates]
    if missing:
        raise UserError(f"prompt not in the prompt list: '{missing[0]}'")
    img = clip.encode_image(frames[:, -1]).float()
    txt = clip.encode_text(candidates).float().to(img.device)
    sim = img @ txt.t()  # [N,K]
    target = torch.tensor([candidates.index(p) for p in prompts], device=sim.device)
    own = sim.gather(1, target[:, None])[:, 0]
    return {"clip_score": own.mean().item(), "text_top1": (sim.argmax(dim=1) == target).float().mean().item()}


def second_difference(x: torch.Tensor) -> torch.Tensor:
    """x [N,T,...] -> x_{t+2} - 2 x_{t+1} + x_t, [N,T-2,...]."""
    return x[:, 2:] - 2 * x[:, 1:-1] + x[:, :-2]


@torch.no_grad()
def smoothness(frames: torch.Tensor, ws: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Temporal smoothness: second differences of pixels / latents and brightness flicker.

    frames [N,T,3,H,W]; ws [N,T,L,C] (optional). Needs T >= 3.
    """
    _check_video(frames)
    if frames.shape[1] < 3:
        raise ValueError("smoothness needs at least 3 frames")
    f = frames.float()
    b = f.mean(dim=(2, 3, 4))  # [N,T]
    out = {"pixel_jerk": second_difference(f).abs().mean().item(),
           "flicker": second_difference(b).abs().mean().item(),
           "brightness_step": (b[:, 1:] - b[:, :-1]).abs().mean().item()}
    if ws is not None:
        out["latent_jerk"] = second_difference(ws.float()).abs().mean().item()
    return out


def psnr(x: torch.Tensor, y: torch.Tensor, peak_to_peak: float = 2.0) -> torch.Tensor:
    """Per-image PSNR in dB. x, y [N,3,H,W] in [-1,1] -> [N] (inf where identical)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak_to_peak ** 2 / mse)


@torch.no_grad()
def frame0_psnr(frames: torch.Tensor, image: torch.Tensor, cap: float = 100.0) -> dict[str, float]:
    """PSNR of frame 0 vs the input image, capped at ``cap`` dB (identical images give inf)."""
    _check_video(frames)
    return {"frame0_psnr": psnr(frames[:, 0], image).clamp(max=cap).mean().item()}


@torch.no_grad()
def video_metrics(frames: torch.Tensor, ws: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None,
                  clip=None, prompts: Optional[Sequence[str]] = None, prompt_list: Optional[Sequence[str]] = None,
                  identity_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                  identity_prefix: str = "") -> dict[str, float]:
    """All per-video metrics that the given inputs allow, in one flat dict of floats.

    ``identity_prefix`` renames the identity keys (e.g. 'clip_' when CLIP features stand in for a
    face-recognition network: clip_id_drift, clip_acd).
    """
    out: dict[str, float] = {}
    if frames.shape[1] >= 3:
        out.update(smoothness(frames, ws))
    if image is not None:
        out.update(frame0_psnr(frames, image))
    if clip is not None and prompts is not None:
        out.update(text_alignment(clip, frames, prompts, prompt_list))
    if identity_fn is not None:
        out.update({identity_prefix + k: v for k, v in identity_drift(frames, identity_fn).items()})
    return out


class ClipFeatures(nn.Module):
    """Feature extractor for torchmetrics' FID: images [N,3,H,W] in [-1,1] -> CLIP embeddings [N,D].

    torchmetrics calls ``feature(imgs)`` on whatever ``update`` receives (no uint8 conversion for a
    custom module) and reads ``num_features`` (else it runs a dummy uint8 forward to find it).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip
        self.num_features = int(clip.embed_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.clip.encode_image(img.float())


class ClipFrechetDistance:
    """Frechet distance between CLIP image features of real and generated images (a corpus metric).

    update(images [N,3,H,W] in [-1,1], real: bool); compute() -> {'clip_fd': float}. Needs >= 2 images
    on each side.
    """

    def __init__(self, clip: nn.Module):
        from torchmetrics.image.fid import FrechetInceptionDistance

        self.metric = FrechetInceptionDistance(feature=ClipFeatures(clip), normalize=False,
                                               reset_real_features=True)

    def to(self, device) -> "ClipFrechetDistance":
        self.metric = self.metric.to(device)
        return self

    def update(self, images: torch.Tensor, real: bool) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [N,3,H,W], got {tuple(images.shape)}")
        self.metric.update(images, real=real)

    def compute(self) -> dict[str, float]:
        value = float(self.metric.compute())
        if math.isnan(value):
            raise RuntimeError("Frechet distance is NaN (too few or degenerate features)")
        return {"clip_fd": value}

    def reset(self) -> None:
        self.metric.reset()
