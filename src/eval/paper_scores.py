"""The paper's video metrics inside the evaluation (``src.eval.paper_metrics`` defines them): which
face network gives a domain's face ACD, and the per-video scores of a batch of animations.

Face ACD network (``face_net``): 'auto' takes the domain's own face recogniser: IR-SE50 (ArcFace)
for real faces, as the paper does (``domain.identity_metric_checkpoint`` when the domain's identity
metric is arcface, else ``checkpoints/model_ir_se50.pth``), and the embedded domain's face recogniser
(``assets/face_id_synthetic``, trained to tell its identities apart, as ArcFace does for people) for
the embedded domain; a path names a network file (.pth: IR-SE50, else a face recogniser of
``src.embedded.face_id``); null: none. Without a network the face ACD is reported as n/a, with why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from src.eval.paper_metrics import (ArcFaceFeatures, FaceFeatures, RecogniserFeatures, face_acd, shape_acd,
                                    video_ms_ssim, written_uint8)
from src.utils.errors import UserError

#: the smallest frame the five MS-SSIM scales fit (16 -> 8 -> 4 -> 2 -> 1 px)
MS_SSIM_MIN_SIZE = 16
EMBEDDED_FACE_NET = "face_id_synthetic.safetensors"
ARCFACE_FILE = "model_ir_se50.pth"


def _load(path: Path, device) -> FaceFeatures:
    if path.suffix in (".pth", ".pt"):
        from src.identity.irse50 import load_irse50

        return ArcFaceFeatures(load_irse50(path, device), f"IR-SE50 ArcFace ({path})")
    from src.embedded.face_id import load_face_id

    return RecogniserFeatures(load_face_id(path, device), f"embedded face recogniser ({path})")


def face_network(domain: dict, face_net: Optional[str] = "auto", assets: str | Path = "assets",
                 checkpoints: str | Path = "checkpoints",
                 device: str | torch.device = "cpu") -> tuple[Optional[FaceFeatures], str]:
    """(the network of the face ACD or None, the name the results give: the network and its file, or
    'n/a (no face recogniser: why)'). domain: the animator's domain config; see the module docstring."""
    if face_net in (None, "", "none", "null"):
        return None, "n/a (no face recogniser: face_net=null)"
    if face_net != "auto":
        path = Path(face_net)
        if not (path.is_file() or path.with_suffix(".safetensors").is_file()):
            raise UserError(f"face_net={face_net}: no such file")
        net = _load(path, device)
        return net, net.name
    if domain.get("name") == "synthetic":
        path = Path(assets) / EMBEDDED_FACE_NET
    elif str(domain.get("identity_metric")) == "arcface" and domain.get("identity_metric_checkpoint"):
        path = Path(domain["identity_metric_checkpoint"])
    else:
        path = Path(checkpoints) / ARCFACE_FILE
    if not path.is_file():
        return None, f"n/a (no face recogniser: {path} not found; give face_net=<IR-SE50 {ARCFACE_FILE}>)"
    net = _load(path, device)
    return net, net.name


@torch.no_grad()
def paper_video_sums(videos: torch.Tensor, face_net: Optional[FaceFeatures] = None) -> dict[str, float]:
    """Sums over videos [N,T,3,H,W] in [-1,1] of each video's temporal MS-SSIM (frames of at least 16
    px), shape ACD and, given a face network, face ACD; each video is scored on the uint8 frames a
    written video holds."""
    sums = {"shape_acd": 0.0}
    small = min(videos.shape[-2:]) < MS_SSIM_MIN_SIZE
    if not small:
        sums["ms_ssim"] = 0.0
    if face_net is not None:
        sums["face_acd"] = 0.0
    for video in videos:
        frames = written_uint8(video)
        sums["shape_acd"] += shape_acd(frames)
        if not small:
            sums["ms_ssim"] += video_ms_ssim(video)
        if face_net is not None:
            sums["face_acd"] += face_acd(frames, face_net)
    return sums
