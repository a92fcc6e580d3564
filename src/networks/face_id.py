"""Face-recognition networks for the animator's identity loss (the paper's ArcFace term).

* :class:`SyntheticFaceID`: the synthetic domain's own recogniser, a small CNN embedding renders so
  that the same identity under any expression or pose lands close and faces that differ in one
  identity attribute (eye size, mouth width, ...) land apart (trained by ``task=face_id``). It is
  trained apart from the attribute oracle, which stays the independent judge of identity drift.
* :class:`ArcFaceIdentity`: IR-SE50 (``model_ir_se50.pth``) with the pSp/e4e FFHQ crop, differentiable,
  for the human domains.
* :class:`IdentityAttributeReader`: the synthetic domain's identity attributes read directly (an
  AttributeOracle-type CNN trained on the identity parameters only, ``experiment=embedded_identity_reader``,
  its own seed and faces; the judge is the separately trained oracle). The analogue for photos is an
  attribute classifier that keeps the attributes a prompt does not ask for.

The recognisers map images [N, 3, H, W] in [-1, 1] to unit embeddings [N, D] compared by cosine;
the reader maps them to attribute readings [N, A] and compares them itself (``identity_distance``).
:func:`build_identity_net` picks one from ``domain.identity_loss``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.networks.oracle import conv_trunk_and_head
from src.networks.weights_file import load_net_state, net_files, read_net_files, save_net
from src.ops.resize import resize
from src.utils.errors import UserError

IDENTITY_LOSS_KINDS = ("none", "synthetic", "arcface", "attributes")


class SyntheticFaceID(nn.Module):
    """CNN face embedder: img [N, 3, H, W] in [-1, 1] -> [N, embed_dim], unit L2 norm.

    resolution: size the network runs at (power of two >= 16; other sizes are resized); width:
    channels of the first stage (doubling per stage, capped at 8x); hidden: MLP width of the head.
    The 4x4 feature map is flattened (not pooled) so that where a part sits (eye spacing) is kept.
    """

    def __init__(self, resolution: int = 128, width: int = 24, hidden: int = 256, embed_dim: int = 128):
        super().__init__()
        if resolution < 16 or resolution & (resolution - 1):
            raise UserError(f"face-id resolution must be a power of two >= 16, got {resolution}")
        if embed_dim < 2 or width < 1 or hidden < 1:
            raise UserError(f"face-id embed_dim must be >= 2 and width, hidden >= 1, got {embed_dim}, {width}, {hidden}")
        self.init_kwargs = {"resolution": resolution, "width": width, "hidden": hidden, "embed_dim": embed_dim}
        self.resolution, self.embed_dim = resolution, embed_dim
        self.features, self.head = conv_trunk_and_head(resolution, width, hidden, embed_dim)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"face-id input must be [N, 3, H, W], got {tuple(img.shape)}")
        if img.shape[-2:] != (self.resolution, self.resolution):
            img = resize(img, (self.resolution, self.resolution), mode="bilinear", antialias=True)
        return F.normalize(self.head(self.features(img)).float(), dim=1)


def save_face_id(net: SyntheticFaceID, path: str | Path, extra: Optional[dict] = None) -> Path:
    """Write <path>.safetensors (fp16 weights) + <path>.json atomically; returns the weights path."""
    meta = {"class": "SyntheticFaceID", "init_kwargs": net.init_kwargs, **(extra or {})}
    return save_net(net, path, meta, dtype=torch.float16)


def load_face_id(path: str | Path, device: str | torch.device = "cpu") -> SyntheticFaceID:
    """Load a network written by save_face_id (path with or without suffix), frozen, in eval mode."""
    meta, weights = read_net_files(path, "face-id")
    if meta.get("class") != "SyntheticFaceID":
        raise UserError(f"{weights.with_suffix('.json')} describes a {meta.get('class')!r}, not a SyntheticFaceID")
    try:
        net = SyntheticFaceID(**meta["init_kwargs"])
    except TypeError as e:
        raise UserError(f"{weights.with_suffix('.json')}: bad face-id arguments ({e})") from None
    return load_net_state(net, weights).to(device).eval().requires_grad_(False)


class ArcFaceIdentity(nn.Module):
    """Differentiable IR-SE50 embedder: img [N, 3, H, W] in [-1, 1] -> [N, 512], unit norm.

    crop 'ffhq' takes the inner face of an FFHQ-aligned frame as pSp/e4e do (resize to 256, rows
    35:223, columns 32:220), 'none' the whole frame; then 112 x 112 by area averaging.
    """

    def __init__(self, net: nn.Module, crop: str = "ffhq"):
        super().__init__()
        if crop not in ("ffhq", "none"):
            raise UserError(f"arcface crop must be 'ffhq' or 'none', got {crop!r}")
        self.net, self.crop = net, crop

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != 3:
            raise UserError(f"arcface input must be [N, 3, H, W], got {tuple(img.shape)}")
        x = img.float().clamp(-1, 1)
        if self.crop == "ffhq":
            if x.shape[-2:] != (256, 256):
                x = resize(x, (256, 256), mode="bilinear", antialias=x.shape[-1] > 256)
            x = x[:, :, 35:223, 32:220]
        return self.net(resize(x, (112, 112), mode="area"))


class IdentityAttributeReader(nn.Module):
    """Identity attributes of synthetic faces as an identity-loss network.

    net: an AttributeOracle whose outputs are ``names`` (identity parameters, normalised to [0, 1]).
    forward(img [N, 3, H, W] in [-1, 1]) -> readings [N, A].
    identity_distance(f [N, T, A], g [N, 1, A]) -> [N, T]: mean over the attributes the reference
    face g shows of |f - g|, in units of each attribute's range (the frame colour of absent glasses
    is not read: it is untrained noise).
    """

    def __init__(self, net: nn.Module, names: list[str]):
        super().__init__()
        from src.data.synthetic.params import PARAM_SPACE

        unknown = [n for n in names if n not in PARAM_SPACE.identity_names]
        if unknown or not names:
            listed = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise UserError("an identity-attribute reader must read identity parameters only"
                            + (f"; this one also reads {len(unknown)} others ({listed})" if unknown else ""))
        self.net, self.names = net, list(names)
        # glasses_color is seen only where glasses are worn (reading >= 0.5: glasses is 0/1)
        self.gated = {self.names.index("glasses_color"): self.names.index("glasses")} \
            if "glasses_color" in self.names and "glasses" in self.names else {}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img).float()

    def shown(self, readings: torch.Tensor) -> torch.Tensor:
        """Which readings [..., A] a face shows: bool [..., A] (the frame colour only with glasses)."""
        seen = torch.ones_like(readings, dtype=torch.bool)
        for shown, by in self.gated.items():
            seen[..., shown] = readings[..., by] >= 0.5
        return seen

    def identity_distance(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        seen = self.shown(g).expand_as(f).to(f.dtype)
        return ((f - g).abs() * seen).sum(-1) / seen.sum(-1).clamp_min(1.0)


def load_identity_reader(path: str | Path, device: str | torch.device = "cpu") -> IdentityAttributeReader:
    """An identity-attribute reader from a file written by save_oracle (targets='identity'), frozen."""
    from src.networks.oracle import load_attribute_net

    net, names = load_attribute_net(path, device, what="identity-attribute reader")
    try:
        return IdentityAttributeReader(net, names).eval().requires_grad_(False)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


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
        return load_face_id(checkpoint, device)
    if kind == "attributes":
        return load_identity_reader(checkpoint, device)
    from src.eval.identity import load_irse50

    return ArcFaceIdentity(load_irse50(checkpoint, device)).eval().requires_grad_(False)


def identity_net_files(kind: str, checkpoint: str) -> list[str]:
    """The files of an identity-loss network (hashed into animator checkpoints)."""
    if str(getattr(kind, "value", kind)) in ("synthetic", "attributes"):
        return [str(f) for f in net_files(checkpoint)]
    return [str(checkpoint)]
