"""Real photos paired with their latent codes, as the CLIP image tower and LPIPS see them.

``data.clip_image=photo`` (:class:`src.data.prompts.PromptDataModule`) pairs every code of a latents
file ``{name: W+ code}`` (e.g. e4e inversions) with the image ``<photos>/.../<name>.<ext>`` it was
inverted from, matched by relative path, file name or file stem (:func:`src.data.face_files.match_latents`).
Each sample then carries the photo as the authors' training step sees it:

    CLIP's PIL preprocessing: Resize(size, bicubic) of the shortest side (PIL's antialiased resize,
    what torchvision's Resize does on a PIL image), CenterCrop(size), RGB, ToTensor, Normalize(CLIP
    mean/std); then their step un-normalises and maps to [-1, 1] (``x * 2 - 1``).

The Normalize / un-normalise round trip is the identity up to float rounding, so it is left out here:
:func:`clip_photo` is resize, crop, ``/ 255``, ``* 2 - 1`` (float32 [3, size, size] in [-1, 1]).

Files are decoded by :func:`src.data.images.load_pil` (size guard, EXIF orientation, RGB). For RGB
files (CelebA-HQ JPEGs) and greyscale ones the pixels are exactly the authors'; an image with alpha is
composited on white before the resize, where theirs resized it and then dropped the alpha.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from src.data.face_files import list_images, match_latents, read_latents_file
from src.data.images import IMAGE_EXTENSIONS, load_pil
from src.utils.errors import UserError
from src.utils.log import warn

PHOTO_SIZE = 224


def clip_photo(im: Image.Image, size: int = PHOTO_SIZE) -> torch.Tensor:
    """The authors' CLIP preprocessing of a PIL image, in [-1, 1]: float32 [3, size, size]."""
    w, h = im.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)  # torchvision's Resize(int) arithmetic
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) != (w, h):
        im = im.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))  # CenterCrop's rounding
    im = im.crop((left, top, left + size, top + size)).convert("RGB")
    x = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).to(torch.float32).div(255)
    return x * 2 - 1


def load_clip_photo(path: str | os.PathLike, size: int = PHOTO_SIZE) -> torch.Tensor:
    """Decode ``path`` and preprocess it (:func:`clip_photo`); UserError ``"<path>: <problem>"``."""
    return clip_photo(load_pil(path), size)


def paired_photos(latents: str | os.PathLike, photos: str | os.PathLike) -> tuple[torch.Tensor, list[str]]:
    """(codes [N, num_ws, w_dim], paths [N]): the codes of ``latents`` that have an image under
    ``photos``, in the sorted order of the image files, with the path of each one's image."""
    root = Path(photos)
    if not root.is_dir():
        raise UserError(f"data.photos: folder '{root}' not found")
    data = read_latents_file(latents)
    if not isinstance(data, dict):
        raise UserError(f"{latents}: data.clip_image=photo needs latents keyed by image name "
                        f"({{name: code}}), this file holds one array of {len(data)} codes without names")
    files = list_images(root)
    if not files:
        raise UserError(f"data.photos: no image files ({' '.join(IMAGE_EXTENSIONS)}) under '{root}'")
    try:
        codes, has = match_latents(data, files, str(latents))
    except UserError:  # no name matches: say how many of each there are, with an example of each
        raise UserError(f"{latents}: none of its {len(data)} codes matches any of the {len(files)} images "
                        f"under '{root}' by file name or stem (e.g. code '{next(iter(data))}', "
                        f"image '{files[0]}')") from None
    keep = [i for i, h in enumerate(has) if h]
    return codes[keep], [str(root / files[i]) for i in keep]


def first_readable(paths: Sequence[str], size: int = PHOTO_SIZE) -> int:
    """Index of the first path that decodes; UserError naming the first failure when none does.

    At start-up this usually decodes one file; it reads them all only when they all fail."""
    first_error = None
    for i, p in enumerate(paths):
        try:
            load_clip_photo(p, size)
            return i
        except UserError as e:
            first_error = first_error or str(e)
    raise UserError(f"none of the {len(paths)} photos paired with codes is readable (first: {first_error})")


class PhotoBank:
    """The photos of one split's codes, loaded on demand (in the DataLoader's workers).

    :meth:`load` of code j returns (j', photo) with j' the first of j, j+1, ... (cyclic) whose file
    decodes: a file that breaks during training hands its sample to the next code in the bank, so the
    choice stays a function of (seed, split, index) and the set of unreadable files, the same on every
    rank and worker. Each broken file is warned about once per process and not retried.
    """

    def __init__(self, paths: Sequence[str], size: int = PHOTO_SIZE):
        self.paths, self.size = list(paths), int(size)
        self.broken: set[int] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, j: int) -> tuple[int, torch.Tensor]:
        n = len(self.paths)
        for k in range(n):
            i = (int(j) + k) % n
            if i in self.broken:
                continue
            try:
                return i, load_clip_photo(self.paths[i], self.size)
            except UserError as e:
                self.broken.add(i)
                warn(f"skipping an unreadable photo, its sample takes the next code's: {e}")
        raise UserError(f"none of the {n} photos of this split is readable any more (first: {self.paths[0]})")

    def batch(self, picks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(code indices actually used [B], photos [B, 3, size, size]) for the drawn ``picks``."""
        used, imgs = zip(*(self.load(int(j)) for j in picks))
        return torch.tensor(used, dtype=torch.long), torch.stack(imgs)
