"""Identity-consistency metrics on embeddings ``[N, T, D]`` of N videos of T frames: drift of every
frame from the first, and the average content distance (ACD) between consecutive frames."""
from __future__ import annotations

from typing import Callable

import torch

from src.utils.errors import UserError

Embedder = Callable[[torch.Tensor], torch.Tensor]


def _check_emb(emb: torch.Tensor, min_t: int) -> torch.Tensor:
    if not isinstance(emb, torch.Tensor) or emb.dim() != 3 or emb.shape[1] < min_t:
        shape = list(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise UserError(f"expected embeddings [N, T, D] with T >= {min_t}, got {shape}")
    return emb.float()


def embed_video(embedder: Embedder, frames: torch.Tensor) -> torch.Tensor:
    """frames [N, T, 3, H, W] -> embeddings [N, T, D] (all frames in one embedder call)."""
    if frames.dim() != 5:
        raise UserError(f"expected videos [N,T,3,H,W], got {list(frames.shape)}")
    n, t = frames.shape[:2]
    emb = embedder(frames.reshape(n * t, *frames.shape[2:]))
    return emb.reshape(n, t, -1)


def acd(emb: torch.Tensor) -> float:
    """Average content distance: mean over videos and consecutive frame pairs of
    ``||e[t+1] - e[t]||^2``. emb: [N, T, D] with T >= 2."""
    e = _check_emb(emb, 2)
    return float((e[:, 1:] - e[:, :-1]).pow(2).sum(-1).mean())


def drift_to_first(emb: torch.Tensor) -> torch.Tensor:
    """L2 distance of every frame's embedding to the first frame's: [N, T, D] -> [N, T] (column 0 is 0)."""
    e = _check_emb(emb, 1)
    return (e - e[:, :1]).norm(dim=-1)


@torch.no_grad()
def identity_drift(frames: torch.Tensor, identity_fn: Embedder) -> dict[str, float]:
    """Identity preservation of videos frames [N,T,3,H,W] under embeddings e = identity_fn(frames):
    mean and per-video max drift to frame 0 over frames 1.., and the ACD."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 5:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise UserError(f"expected videos [N,T,3,H,W], got {shape}")
    emb = embed_video(identity_fn, frames)
    dist = drift_to_first(emb)  # [N,T], dist[:,0] = 0
    return {"id_drift": dist[:, 1:].mean().item(), "id_drift_max": dist[:, 1:].max(dim=1).values.mean().item(),
            "acd": acd(emb)}
