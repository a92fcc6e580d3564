"""Losses of the language-guided animator (pure functions; weights live in conf/loss/*.yaml).

Notation: N videos, T frames, D embedding size, L = num_ws, C = w_dim.
Every function returns a 0-dim tensor (mean over the batch).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


def similarity_matrix(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarities s_ij = cos(image_i, text_j). [N,D],[M,D] -> [N,M]."""
    return F.normalize(image_emb.float(), dim=-1) @ F.normalize(text_emb.float(), dim=-1).t()


def contrastive_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, tau: float = 0.07,
                          positive: Optional[torch.Tensor] = None,
                          allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Contrastive CLIP loss of the paper on the last frames.

    L = mean_i log(1 + sum_j exp((s_ij - s_i,pos(i)) / tau)),  s_ij = cos(image_i, text_j),
    with j running over ALL candidate prompts, j = pos(i) included, exactly as the paper's method
    description writes it when the candidates are the batch's prompts. The j = pos(i) term
    contributes exp(0) = 1, so the minimum is log 2, not 0; the gradient is the same as without
    that constant term up to the scale of the log argument.

    image_emb [N,D]; text_emb [M,D]: the candidate prompts, which must be distinct (a duplicate
    of image i's own prompt would count as its negative); positive: LongTensor [N], the row of
    text_emb holding image i's own prompt. Default (positive None): M == N and row i is image i's
    prompt (pos(i) = i), the batch-local form.

    Under DDP every rank passes the same candidates (the distinct prompts of the global batch),
    so a rank's loss over its images is the union batch's loss restricted to those rows.
    allowed: BoolTensor [N,M], which candidates count for image i (default all); e.g. the prompts of
    the image's own group when one process stands in for several GPUs with local negatives.
    Computed as a logsumexp over [0, a_i1, ..., a_iM] for numerical stability.
    """
    s = similarity_matrix(image_emb, text_emb)  # [N,M]
    if positive is None:
        if s.shape[0] != s.shape[1]:
            raise ValueError(f"{s.shape[0]} images and {s.shape[1]} prompts: pass positive= (the row of each "
                             "image's prompt among the candidates)")
        own = s.diagonal()[:, None]
    else:
        positive = torch.as_tensor(positive, device=s.device, dtype=torch.long)
        if positive.shape != (s.shape[0],):
            raise ValueError(f"positive must be [N] = [{s.shape[0]}], got {tuple(positive.shape)}")
        # a one-hot row sum rather than gather: no scatter-add (CUDA atomics) in the backward
        own = (s * F.one_hot(positive, s.shape[1]).to(s.dtype)).sum(1, keepdim=True)  # [N,1]
    a = (s - own) / tau
    if allowed is not None:
        a = a.masked_fill(~allowed.to(device=a.device, dtype=torch.bool), float("-inf"))
    a = torch.cat([torch.zeros_like(a[:, :1]), a], dim=1)  # the "1 +" term
    return torch.logsumexp(a, dim=1).mean()


def cosine_clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """1 - cos(image_i, text_i), averaged. [N,D],[N,D] -> scalar. Used when the contrastive
    weight is 0 (``clip_loss: cosine``): it needs no other prompts in the batch."""
    return (1.0 - (F.normalize(image_emb.float(), dim=-1) * F.normalize(text_emb.float(), dim=-1)).sum(-1)).mean()


def lpips_identity_loss(perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], image: torch.Tensor,
                        first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """LPIPS(first, image) + LPIPS(last, image), each averaged over the batch.

    perceptual(x [N,3,H,W], y [N,3,H,W]) -> [N] distances; image/first/last [N,3,H,W] in [-1,1].
    """
    return perceptual(first, image).mean() + perceptual(last, image).mean()


def smoothness_loss(offsets: torch.Tensor) -> torch.Tensor:
    """MSE(off_{t+2} - off_{t+1}, off_{t+1} - off_t) over t = 0..T-3 (second differences).

    offsets [N,T,L,C] (mapped W+ offsets) -> scalar; zero when T < 3 (no second difference exists).
    """
    if offsets.shape[1] < 3:
        return offsets.new_zeros(())
    d = offsets[:, 1:] - offsets[:, :-1]
    return F.mse_loss(d[:, 1:], d[:, :-1])


def endpoint_loss(offsets: torch.Tensor) -> torch.Tensor:
    """MSE(off_0, off_{T-1}). offsets [N,T,L,C] -> scalar."""
    return F.mse_loss(offsets[:, -1], offsets[:, 0])


LATENT_REDUCTIONS = ("mean", "sum")


def latent_reg_loss(ws: torch.Tensor, w_input: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """MSE(w_t, w_input) of every frame, reduced over the T frames by ``reduction``:
    'mean' (1/T sum_t) or 'sum' (sum_t, the authors' code: T times the mean).
    ws [N,T,L,C], w_input [N,L,C] (or [N,1,C], a W latent shared by the layers) -> scalar."""
    if reduction not in LATENT_REDUCTIONS:
        raise ValueError(f"latent reduction '{reduction}' is not one of {', '.join(LATENT_REDUCTIONS)}")
    per_frame = (ws - w_input[:, None]).pow(2).flatten(2).mean(dim=2).mean(dim=0)  # [T]
    return per_frame.sum() if reduction == "sum" else per_frame.mean()


def identity_loss(identity_net: nn.Module, frames: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """d(f(frame_t), f(image)), averaged over frames and batch.

    identity_net: [M,3,H,W] in [-1,1] -> [M,E]: a face recogniser (d = 1 - cos, the paper's term) or
    a network with its own ``identity_distance(f [N,T,E], g [N,1,E]) -> [N,T]`` (the attribute reader).
    frames [N,T,3,H,W], image [N,3,H,W] -> scalar.
    """
    n, t = frames.shape[:2]
    f = identity_net(frames.reshape(n * t, *frames.shape[2:])).view(n, t, -1)
    g = identity_net(image).view(n, 1, -1)
    distance = getattr(identity_net, "identity_distance", None)
    if distance is not None:
        return distance(f, g).mean()
    return (1.0 - F.cosine_similarity(f, g.expand_as(f), dim=-1)).mean()


def total_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_k weights[k] * terms[k] over the terms present. Terms with weight 0 are skipped."""
    out: Optional[torch.Tensor] = None
    for k, v in terms.items():
        w = float(weights.get(k, 0.0))
        if w == 0.0:
            continue
        out = w * v if out is None else out + w * v
    if out is None:
        raise ValueError("all loss weights are zero: nothing to optimise")
    return out
