"""The identity networks of a domain config, by kind: the loss network of ``domain.identity_loss``
(differentiable, frozen) and the metric embedder of ``domain.identity_metric``."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn as nn

from src.identity.frames import check_frames
from src.identity.metrics import Embedder
from src.networks.weights_file import net_files
from src.utils.errors import UserError

IDENTITY_LOSS_KINDS = ("none", "synthetic", "arcface", "attributes")
IDENTITY_METRIC_KINDS = ("oracle", "dlib", "arcface", "none")


def build_identity_net(kind: str, checkpoint: Optional[str], device: str | torch.device = "cpu") -> Optional[nn.Module]:
    """The identity-loss network of ``domain.identity_loss``: None for 'none'."""
    kind = str(getattr(kind, "value", kind))
    if kind not in IDENTITY_LOSS_KINDS:
        raise UserError(f"domain.identity_loss.kind must be one of {', '.join(IDENTITY_LOSS_KINDS)}; got {kind!r}")
    if kind == "none":
        return None
    if not checkpoint:
        raise UserError(f"domain.identity_loss.kind '{kind}' needs domain.identity_loss.checkpoint (weights file)")
    if kind == "synthetic":
        from src.embedded.face_id import load_face_id

        return load_face_id(checkpoint, device)
    if kind == "attributes":
        from src.identity.reader import load_identity_reader

        return load_identity_reader(checkpoint, device)
    from src.identity.arcface import ArcFaceIdentity
    from src.identity.irse50 import load_irse50

    return ArcFaceIdentity(load_irse50(checkpoint, device)).eval().requires_grad_(False)


def identity_net_files(kind: str, checkpoint: str) -> list[str]:
    """The files of an identity-loss network (hashed into animator checkpoints)."""
    if str(getattr(kind, "value", kind)) in ("synthetic", "attributes"):
        return [str(f) for f in net_files(checkpoint)]
    return [str(checkpoint)]


class FunctionEmbedder:
    """A metric embedder from a callable frames [N,3,H,W] -> [N, D] (e.g. the embedded domain's
    attribute oracle restricted to the identity parameters), with the shape checks of the others."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = check_frames(frames)
        emb = self.fn(frames)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != frames.shape[0]:
            got = list(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise UserError(f"the oracle identity function must return [N, D] for N frames, got {got}")
        return emb.float().to(frames.device)


def identity_embedder(kind: str = "dlib", **kw) -> Optional[Embedder]:
    """An identity metric embedder: callable(frames [N,3,H,W] in [-1,1]) -> [N, D].

    Args:
        kind: 'dlib' (kwargs of :class:`~src.identity.dlib.DlibEmbedder`), 'arcface' (kwargs of
            :class:`~src.identity.arcface.ArcFaceEmbedder`: path, device, crop, batch_size), 'oracle'
            (``fn=`` a callable frames -> [N, D]) or 'none' (returns None: no identity metric).
    """
    kind = str(getattr(kind, "value", kind))
    if kind == "dlib":
        from src.identity.dlib import DlibEmbedder

        return DlibEmbedder(**kw)
    if kind == "arcface":
        from src.identity.arcface import ArcFaceEmbedder

        return ArcFaceEmbedder(**kw)
    if kind == "oracle":
        fn = kw.pop("fn", None)
        if kw:
            raise UserError(f"identity_embedder('oracle') takes only fn=, got {sorted(kw)}")
        if not callable(fn):
            raise UserError("identity_embedder('oracle') needs fn=<callable frames [N,3,H,W] -> [N,D]>")
        return FunctionEmbedder(fn)
    if kind == "none":
        return None
    raise UserError(f"identity metric must be one of {', '.join(IDENTITY_METRIC_KINDS)}; got {kind!r}")
