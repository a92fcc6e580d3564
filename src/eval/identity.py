"""Identity embeddings of face frames and the identity-consistency metrics built on them.

Embedders map frames ``[N, 3, H, W]`` in [-1, 1] to embeddings ``[N, D]`` (float32, on the frames'
device):

* ``'dlib'``: dlib's ResNet face descriptor (D = 128; two photos of one person are usually
  < 0.6 apart in L2), model file from the ``face_recognition_models`` PyPI package. Meant for
  aligned/cropped faces (FFHQ/CelebA-HQ framing): each frame is resized to 256 px, the face is
  detected (the canonical FFHQ face box is used when the detector finds none, so every frame gets
  an embedding), its 68 landmarks give dlib's 150 px face chip, and the chip is described.
* ``'arcface'``: an IR-SE50 ArcFace network (D = 512, unit norm), the network of the paper's ACD.
  Weights are NOT shipped: give the file ``model_ir_se50.pth`` (the IR-SE50 weights that pSp / e4e
  publish for their identity loss). As in those projects, a frame is resized to 256, cropped to
  the inner face ``[35:223, 32:220]`` and pooled to 112 x 112.
* ``'oracle'``: a callable handed over by the caller (e.g. the synthetic domain's attribute
  oracle, restricted to identity parameters).
* ``'none'``: no identity metric; :func:`identity_embedder` returns None.

Metrics on embeddings ``[N, T, D]`` of N videos of T frames: :func:`acd` (average content
distance: mean squared L2 distance between consecutive frames) and :func:`drift_to_first`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from src.ops.resize import resize
from src.utils.errors import UserError

Embedder = Callable[[torch.Tensor], torch.Tensor]

ARCFACE_FILE = "model_ir_se50.pth"
#: The dlib detector's box on an FFHQ-aligned face, as fractions of the side (left, top, right,
#: bottom): measured on aligned CelebA-HQ samples; used when detection fails on a frame.
CANONICAL_FACE_BOX = (0.20, 0.31, 0.78, 0.89)


def _check_frames(frames: torch.Tensor) -> torch.Tensor:
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] != 3:
        shape = list(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise UserError(f"identity embedder expects frames [N,3,H,W] in [-1,1], got {shape}")
    return frames


def _resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,H,W] -> [N,3,size,size] (antialiased when shrinking)."""
    if frames.shape[-2:] == (size, size):
        return frames
    shrink = min(frames.shape[-2:]) > size
    return resize(frames.float(), (size, size), mode="bilinear", antialias=shrink)


# ----------------------------------------------------------------------------------- dlib
class DlibEmbedder:
    """dlib ResNet face descriptors: frames [N,3,H,W] in [-1,1] -> [N,128].

    Args:
        work_size: frames are resized to this square size first (256: fast, and the chip is 150 px).
        detect: detect the face in each frame (falls back to :data:`CANONICAL_FACE_BOX`); False
            always uses the canonical box (fully deterministic framing for aligned faces).
        num_jitters: dlib's test-time augmentation count (0 = none, deterministic).
    """

    def __init__(self, work_size: int = 256, detect: bool = True, num_jitters: int = 0):
        from src.data.alignment import RESNET_DESCRIPTOR, dlib_model_path, import_dlib, landmark_predictor

        dlib = import_dlib()
        self._dlib = dlib
        self._predictor = landmark_predictor()
        self._net = dlib.face_recognition_model_v1(str(dlib_model_path(RESNET_DESCRIPTOR)))
        self.work_size = int(work_size)
        self.detect = bool(detect)
        self.num_jitters = int(num_jitters)
        self.dim = 128

    def _box(self, img: np.ndarray) -> tuple[float, float, float, float]:
        if self.detect:
            from src.data.alignment import detect_faces

            boxes = detect_faces(img, work_side=max(self.work_size, 256))
            if boxes:
                return boxes[0]
        s = img.shape[0]
        return tuple(v * s for v in CANONICAL_FACE_BOX)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = _check_frames(frames)
        small = _resize(frames.detach().float().cpu(), self.work_size).clamp(-1, 1)
        u8 = ((small + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        out = []
        for img in u8:
            l, t, r, b = self._box(img)
            rect = self._dlib.rectangle(int(round(l)), int(round(t)), int(round(r)), int(round(b)))
            shape = self._predictor(img, rect)
            desc = self._net.compute_face_descriptor(img, shape, self.num_jitters)
            out.append(np.asarray(desc, dtype=np.float32))
        return torch.from_numpy(np.stack(out)).to(frames.device)


# ----------------------------------------------------------------------------------- IR-SE50
class SEModule(nn.Module):
    """Squeeze-and-excitation: x * sigmoid(W2 relu(W1 avgpool(x))), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a mean, not AdaptiveAvgPool2d(1): the same value, and its CUDA backward is deterministic
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class BottleneckIRSE(nn.Module):
    """Improved-residual unit with SE: BN-conv3x3-PReLU-conv3x3(stride)-BN-SE plus a shortcut
    (identity via a 1x1 max-pool with the stride when channels match, else conv1x1+BN)."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50 backbone: [N,3,112,112] in [-1,1] -> [N,512] unit-norm embeddings.

    Four stages of (3, 4, 14, 3) units with depths 64, 128, 256, 512; each stage's first unit
    has stride 2 (112 -> 7). Parameter names follow the published ``model_ir_se50.pth``.
    """

    STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))

    def __init__(self, drop_ratio: float = 0.4):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in self.STAGES:
            units.append(BottleneckIRSE(cin, depth, 2))
            units.extend(BottleneckIRSE(depth, depth, 1) for _ in range(n - 1))
        self.body = nn.Sequential(*units)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (112, 112):
            raise ValueError(f"IRSE50 expects 112x112 inputs, got {tuple(x.shape[-2:])}")
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


def _default_arcface_paths() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [Path.cwd() / "checkpoints" / ARCFACE_FILE, repo / "checkpoints" / ARCFACE_FILE]


def load_irse50(path: Optional[str | Path] = None, device: str | torch.device = "cpu") -> IRSE50:
    """Build IR-SE50 and load ``model_ir_se50.pth`` (weights_only). UserError when the file is
    missing, unreadable, or its keys/shapes do not match the architecture."""
    candidates = [Path(path)] if path is not None else _default_arcface_paths()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        where = " or ".join(str(p) for p in candidates)
        raise UserError(f"ArcFace weights not found ({where}): download the IR-SE50 file {ARCFACE_FILE} "
                        "(published with pSp/e4e) and pass its path, or use identity_metric=dlib")
    try:
        state = torch.load(found, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{found}: cannot read ArcFace weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{found}: expected a state dict of tensors for IR-SE50")
    # DataParallel checkpoints prefix every name with "module."
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    net = IRSE50()
    own = net.state_dict()
    # older checkpoints predate BatchNorm's num_batches_tracked counter: not a mismatch
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of wrong shape (e.g. {k}: {list(state[k].shape)} vs {list(own[k].shape)})")
        raise UserError(f"{found}: not IR-SE50 ArcFace weights: keys " + "; ".join(parts))
    net.load_state_dict(state, strict=False)
    return net.eval().requires_grad_(False).to(device)


class ArcFaceEmbedder:
    """IR-SE50 embeddings: frames [N,3,H,W] in [-1,1] -> [N,512] (unit norm).

    Args:
        path: ``model_ir_se50.pth`` (default: ``checkpoints/`` of the working dir, then of the repo).
        device: where the network runs.
        crop: 'ffhq' (resize to 256, crop the inner face [35:223, 32:220], as pSp/e4e do for
            FFHQ-aligned images) or 'none' (the whole frame).
        batch_size: frames per forward pass.
    """

    def __init__(self, path: Optional[str | Path] = None, device: str | torch.device = "cpu",
                 crop: str = "ffhq", batch_size: int = 64, net: Optional[IRSE50] = None):
        if crop not in ("ffhq", "none"):
            raise UserError(f"arcface crop must be 'ffhq' or 'none', got {crop!r}")
        self.net = net.eval().to(device) if net is not None else load_irse50(path, device)
        self.device = torch.device(device)
        self.crop = crop
        self.batch_size = int(batch_size)
        self.dim = 512

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1,1] -> [N,3,112,112] network input."""
        x = frames.float().clamp(-1, 1)
        if self.crop == "ffhq":
            x = _resize(x, 256)[:, :, 35:223, 32:220]
        return resize(x, (112, 112), mode="area")  # adaptive average pooling (deterministic on CUDA)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = _check_frames(frames)
        out = [self.net(self.preprocess(chunk.to(self.device)))
               for chunk in frames.split(self.batch_size)]
        return torch.cat(out).float().to(frames.device)


# ----------------------------------------------------------------------------------- factory
class _OracleEmbedder:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        self.fn = fn

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        frames = _check_frames(frames)
        emb = self.fn(frames)
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[0] != frames.shape[0]:
            got = list(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
            raise UserError(f"the oracle identity function must return [N, D] for N frames, got {got}")
        return emb.float().to(frames.device)


def identity_embedder(kind: str = "dlib", **kw) -> Optional[Embedder]:
    """An identity embedder: callable(frames [N,3,H,W] in [-1,1]) -> [N, D].

    Args:
        kind: 'dlib' (kwargs of :class:`DlibEmbedder`), 'arcface' (kwargs of
            :class:`ArcFaceEmbedder`: path, device, crop, batch_size), 'oracle' (``fn=`` a callable
            frames -> [N, D]) or 'none' (returns None: no identity metric for the domain).
    """
    kind = str(getattr(kind, "value", kind))
    if kind == "dlib":
        return DlibEmbedder(**kw)
    if kind == "arcface":
        return ArcFaceEmbedder(**kw)
    if kind == "oracle":
        fn = kw.pop("fn", None)
        if kw:
            raise UserError(f"identity_embedder('oracle') takes only fn=, got {sorted(kw)}")
        if not callable(fn):
            raise UserError("identity_embedder('oracle') needs fn=<callable frames [N,3,H,W] -> [N,D]>")
        return _OracleEmbedder(fn)
    if kind == "none":
        return None
    raise UserError(f"identity metric must be one of oracle, dlib, arcface, none; got {kind!r}")


# ----------------------------------------------------------------------------------- metrics
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
