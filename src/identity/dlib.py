"""dlib's ResNet face descriptor as an identity metric embedder (D = 128; two photos of one person
are usually < 0.6 apart in L2), the model file from the ``face_recognition_models`` PyPI package.

Meant for aligned/cropped faces (FFHQ/CelebA-HQ framing): each frame is resized to 256 px, the face
is detected (the canonical FFHQ face box is used when the detector finds none, so every frame gets
an embedding), its 68 landmarks give dlib's 150 px face chip, and the chip is described.
"""
from __future__ import annotations

import numpy as np
import torch

from src.identity.frames import check_frames, resize_square

#: The dlib detector's box on an FFHQ-aligned face, as fractions of the side (left, top, right,
#: bottom): measured on aligned CelebA-HQ samples; used when detection fails on a frame.
CANONICAL_FACE_BOX = (0.20, 0.31, 0.78, 0.89)


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
        frames = check_frames(frames)
        small = resize_square(frames.detach().float().cpu(), self.work_size).clamp(-1, 1)
        u8 = ((small + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
        out = []
        for img in u8:
            l, t, r, b = self._box(img)
            rect = self._dlib.rectangle(int(round(l)), int(round(t)), int(round(r)), int(round(b)))
            shape = self._predictor(img, rect)
            desc = self._net.compute_face_descriptor(img, shape, self.num_jitters)
            out.append(np.asarray(desc, dtype=np.float32))
        return torch.from_numpy(np.stack(out)).to(frames.device)
