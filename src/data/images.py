"""Safe image I/O for the whole project: decode untrusted files, write atomically.

Every image enters the project through :func:`load_image` and leaves through :func:`save_image`.
Tensors follow the project convention: float32, RGB, channels first, values in [-1, 1].

Loading policy
--------------
* The header is read first and the declared size checked *before* any pixel is decoded, so a
  decompression bomb (a tiny file declaring e.g. 100000 x 100000 pixels) is refused without
  allocating memory. PIL's own guard (``DecompressionBombError``) is caught as well.
* ``Image.verify()`` runs on a first handle (it checks e.g. PNG chunk CRCs), then the file is
  reopened and fully decoded; a truncated stream fails the decode (PIL's
  ``LOAD_TRUNCATED_IMAGES`` is left False, never set globally here).
* EXIF orientation is applied (phone photos are stored sideways with an orientation tag).
  A malformed EXIF block is ignored: it is metadata, the pixels are still good.
* Odd modes become RGB: ``1``/``L``/``P``/``CMYK``/``YCbCr``/``LAB``/``HSV`` via PIL;
  16/32-bit integer (``I;16*``, ``I``) and float (``F``) greyscale are rescaled to 8 bit
  (see :func:`_high_depth_to_l`); modes with alpha (``RGBA``, ``LA``, ``PA``, ``P`` with a
  transparency entry, ``RGBa``/``La``) are composited on a solid background, **white by
  default** (transparent cut-outs and drawn/anime faces are made for a white page; a black
  background would darken anti-aliased edges into a halo). Pass ``background='black'`` to change.
* Every failure is a :class:`~src.utils.errors.UserError` with one line ``"<path>: <problem>"``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from src.utils.errors import UserError
from src.utils.io import atomic_write

PathLike = Union[str, os.PathLike]

#: Default pixel budget (width * height) for one image: 64 MPix covers 8K photos; a larger
#: declared size is treated as a decompression bomb. PIL's own global guard still applies on top
#: (it raises above 2 x ``Image.MAX_IMAGE_PIXELS``), so raising this past ~179 MPix has no effect.
DEFAULT_MAX_PIXELS = 64_000_000

#: File extensions the project treats as images (lower case, with the dot).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}
_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def _fail(path: PathLike, problem: str) -> UserError:
    # one line: some PIL messages carry newlines
    return UserError(f"{path}: {' '.join(str(problem).split())}")


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale -> 8-bit ``L``.

    ``I;16*`` is scaled by 255/65535. ``I`` (32-bit) is what PIL gives for many 16-bit PNG/TIFF
    files, but also for 8-bit data converted upstream: values above 255 are read as 16-bit,
    otherwise as 8-bit. ``F`` is read as [0, 1] when its maximum is <= 1, else as [0, 255].
    Values outside the range are clipped.
    """
    a = np.asarray(im)
    if im.mode == "F":
        a = a.astype(np.float64)
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
    else:
        a = a.astype(np.float64)
        if im.mode.startswith("I;16") or (a.size and a.max() > 255):
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
    a = np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(a)  # uint8 2-D -> "L"


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Any PIL mode -> ``RGB`` (alpha composited on ``background``)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info) or (im.mode in ("L", "RGB", "1") and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")  # premultiplied modes and palettes are expanded by PIL here
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return im.convert("RGB")


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 tensor [3, H, W] in [-1, 1]."""
    a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def tensor_to_uint8(img: torch.Tensor) -> np.ndarray:
    """[3, H, W] or [1, 3, H, W] (or [1, H, W] grey) in [-1, 1] -> uint8 numpy [H, W, 3].

    Values are clamped to [-1, 1] and rounded (not truncated) to 0..255.
    """
    if not isinstance(img, torch.Tensor):
        raise UserError(f"expected an image tensor, got {type(img).__name__}")
    t = img.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise UserError(f"expected an image tensor [3,H,W] in [-1,1], got shape {list(img.shape)}")
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    t = t.float().cpu().nan_to_num(0.0).clamp(-1.0, 1.0)
    return ((t + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def tensor_to_pil(img: torch.Tensor) -> Image.Image:
    """[3, H, W] in [-1, 1] -> RGB PIL image."""
    return Image.fromarray(tensor_to_uint8(img))  # uint8 HxWx3 -> "RGB"


def load_pil(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white") -> Image.Image:
    """Decode ``path`` safely into an RGB PIL image (policy in the module docstring).

    Raises UserError("<path>: <problem>") for a missing/unreadable/non-image/corrupt/truncated
    file or one whose declared size exceeds ``max_pixels``.
    """
    p = Path(path)
    if background not in _BACKGROUNDS:
        raise UserError(f"background must be 'white' or 'black', got {background!r}")
    if not p.exists():
        raise _fail(p, "no such file")
    if p.is_dir():
        raise _fail(p, "is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            # our own pixel limit below is the policy; PIL's warning would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(p) as probe:
                w, h = probe.size
                if w <= 0 or h <= 0:
                    raise _fail(p, f"invalid image size {w}x{h}")
                if w * h > max_pixels:
                    raise _fail(p, f"image too large ({w}x{h} = {w * h} pixels > limit {max_pixels}); "
                                   "refusing it as a possible decompression bomb")
                probe.verify()
            with Image.open(p) as im:
                im.load()
                try:
                    im = ImageOps.exif_transpose(im)
                except Exception:  # malformed EXIF: keep the pixels as stored
                    pass
                try:
                    rgb = _to_rgb(im, _BACKGROUNDS[background])
                except ValueError:  # e.g. LAB / HSV TIFFs: PIL has no conversion to RGB for them
                    raise _fail(p, f"unsupported colour mode '{im.mode}'") from None
                rgb.load()
                return rgb
    except UserError:
        raise
    except Image.DecompressionBombError as e:
        raise _fail(p, f"refusing a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise _fail(p, "not an image file (or an unsupported format)") from None
    except PermissionError:
        raise _fail(p, "permission denied") from None
    except MemoryError:
        raise _fail(p, "out of memory while decoding the image") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError,
            ZeroDivisionError, RuntimeError) as e:
        # PIL reports truncation/corruption through many exception types, depending on the codec
        raise _fail(p, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


def load_image(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white") -> torch.Tensor:
    """Decode an image file into a float32 tensor [3, H, W] in [-1, 1] (RGB).

    Args:
        path: image file (any format PIL reads).
        max_pixels: refuse images whose declared width * height exceeds this.
        background: 'white' (default) or 'black': what transparent pixels are composited on.
    Raises:
        UserError: one line ``"<path>: <problem>"``.
    """
    return pil_to_tensor(load_pil(path, max_pixels=max_pixels, background=background))


def save_image(img: torch.Tensor, path: PathLike, quality: int = 95) -> Path:
    """Write a [3, H, W] (or [1, 3, H, W]) tensor in [-1, 1] to ``path`` atomically.

    The format follows the extension (.png .jpg/.jpeg .webp .bmp .tif/.tiff). The image is encoded
    into a temporary file in the same folder and renamed onto ``path`` only when complete, so a
    failure (bad tensor, full disk, interrupt) leaves neither a partial file nor a damaged old one.
    Returns the written path.
    """
    p = Path(path)
    fmt = _SAVE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise _fail(p, f"unsupported image extension '{p.suffix}' (use one of {', '.join(sorted(_SAVE_FORMATS))})")
    pil = tensor_to_pil(img)  # validates the tensor before any file is created
    kwargs = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}
    try:
        with atomic_write(p) as tmp:
            pil.save(tmp, format=fmt, **kwargs)
            # mkstemp creates 0600 files; give the image the usual permissions (0666 minus umask)
            os.chmod(tmp, 0o666 & ~_umask())
    except OSError as e:
        raise _fail(p, f"cannot write image ({e.strerror or e})") from None
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def resize_square(img: torch.Tensor, size: int) -> torch.Tensor:
    """Centre-crop to a square, then resize (antialiased bicubic) to ``size`` x ``size``.

    Args:
        img: [3, H, W] or [N, 3, H, W] in [-1, 1].
    Returns:
        [3, size, size] or [N, 3, size, size], clamped to [-1, 1].
    """
    squeeze = img.dim() == 3
    x = img.unsqueeze(0) if squeeze else img
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    x = x[..., top:top + s, left:left + s]
    if s != size:
        # antialias only matters when shrinking; bicubic overshoot is clamped back into range
        x = F.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False,
                          antialias=s > size).clamp_(-1.0, 1.0)
    return x[0] if squeeze else x


def resize_square_pil(im: Image.Image, size: int) -> Image.Image:
    """PIL twin of :func:`resize_square`: centre-crop to a square, bicubic resize (antialiased
    when shrinking, as PIL's resampling filters widen with the scale). Faster than the tensor
    path for single decoded files (data loading)."""
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    if s != w or s != h:
        im = im.crop((left, top, left + s, top + s))
    if s != size:
        im = im.resize((size, size), Image.BICUBIC, reducing_gap=None if s < 3 * size else 3.0)
    return im


def is_image_file(path: PathLike) -> bool:
    """True when the name has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
