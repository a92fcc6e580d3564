"""Real-face splits and the per-split dataset (human / anime / dog image folders).

Items are dicts (batched by the default collate)::

    image       [3, R, R]         float32 in [-1, 1], R = the domain resolution (generator input side)
    image_clip  [3, C, C]         float32 in [-1, 1], C = clip_resolution (224); the CLIP wrapper
                                  normalises it itself
    latent      [num_ws, w_dim]   (only with latents: e.g. e4e W+ codes)
    caption     str               (only with captions; train: a random caption of the image,
                                  val/test: its first caption)
    path        str               path relative to ``root`` (POSIX separators)

Splits (:func:`split_files`): a split with a list file (:func:`src.data.face_files.read_list_file`)
takes the listed files; a split without a list takes ``round(fraction * N)`` files (at least 1 for
a positive fraction) from a permutation seeded by ``seed``; train without a list takes what is
left. Splits are computed on the full sorted file list, *then* files without a latent/caption
(when those files are given) are dropped and counted, so splits do not move when coverage changes.

Robustness: an unreadable image (corrupt, truncated, not an image, too large, or no face when
``align=True``) never stops an epoch: the dataset serves the next readable file instead and flags
the bad one in a shared-memory table (visible from DataLoader worker processes), so it is tried
only once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from src.data.face_files import NameMatcher, read_list_file
from src.data.images import DEFAULT_MAX_PIXELS, load_pil, pil_to_tensor, resize_square_pil
from src.utils.errors import UserError

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- splits
def split_files(files: Sequence[str], lists: dict[str, Optional[str]], fractions: dict[str, float],
                seed: int, root: Path) -> dict[str, list[int]]:
    """Indices into ``files`` of the "train", "val" and "test" splits (rules in the module docstring).

    lists: split -> list file or None; fractions: "val" / "test" -> fraction of ``len(files)``;
    root: the image folder (for messages).
    """
    matcher = NameMatcher(files)
    index = {f: i for i, f in enumerate(files)}
    taken: dict[int, str] = {}
    splits: dict[str, list[int]] = {}
    for split, lst in lists.items():
        if lst is None:
            continue
        names = read_list_file(lst)
        ids, unknown = [], []
        for name in names:
            f = matcher(name)
            (unknown.append(name) if f is None else ids.append(index[f]))
        if unknown:
            raise UserError(f"{lst}: {len(unknown)} listed file(s) not found under {root} "
                            f"(first: '{unknown[0]}')")
        for g in ids:
            if g in taken and taken[g] != split:
                raise UserError(f"{lst}: '{files[g]}' is also in the {taken[g]} list")
            taken[g] = split
        splits[split] = sorted(set(ids))
        if not splits[split]:
            raise UserError(f"{lst}: the {split} list is empty")
    rest = [g for g in range(len(files)) if g not in taken]
    perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed)).tolist()
    rest = [rest[k] for k in perm]
    n_total = len(files)
    for split in ("test", "val"):
        if split in splits:
            continue
        frac = fractions[split]
        n = int(round(frac * n_total))
        if frac > 0 and n == 0 and n_total >= 3:
            n = 1  # a positive fraction always yields a (tiny) split
        n = min(n, len(rest))
        splits[split], rest = sorted(rest[:n]), rest[n:]
    if "train" not in splits:
        splits["train"] = sorted(rest)
    elif rest:
        log.info("%d file(s) under %s are in no split list and are not used", len(rest), root)
    if not splits["train"]:
        raise UserError(f"{root}: no images left for training after the val/test split "
                        f"({n_total} found; lower val_fraction/test_fraction or add images)")
    return splits


# ----------------------------------------------------------------------------------- dataset
class FaceImageDataset(Dataset):
    """One split. Item ``i`` is the ``i``-th file of the split, or the next readable one.

    Args:
        root: image folder.
        files: relative paths of the whole folder (the split indexes into it via ``ids``).
        ids: indices into ``files`` for this split.
        bad: shared uint8 tensor [len(files)], 1 = unreadable (written by any worker).
        latents: optional [len(files), num_ws, w_dim]; captions: optional per-file caption lists.
        random_caption: pick a random caption (train) instead of the first (val/test).
    """

    def __init__(self, root: Path, files: Sequence[str], ids: Sequence[int], bad: torch.Tensor,
                 resolution: int, clip_resolution: int = 224, latents: Optional[torch.Tensor] = None,
                 captions: Optional[list[list[str]]] = None, random_caption: bool = False,
                 align: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root)
        self.files = list(files)
        self.ids = list(ids)
        self.bad = bad
        self.resolution = int(resolution)
        self.clip_resolution = int(clip_resolution)
        self.latents = latents
        self.captions = captions
        self.random_caption = random_caption
        self.align = align
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, gid: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode file ``gid`` -> (image [3,R,R], image_clip [3,C,C]); UserError when unusable."""
        path = self.root / self.files[gid]
        pil = load_pil(path, max_pixels=self.max_pixels)
        if self.align:
            from src.data.alignment import align_face, to_pil_rgb
            pil = to_pil_rgb(align_face(pil, size=self.resolution, name=str(path)))
        image = pil_to_tensor(resize_square_pil(pil, self.resolution))
        image_clip = pil_to_tensor(resize_square_pil(pil, self.clip_resolution))
        return image, image_clip

    def __getitem__(self, i: int) -> dict[str, Any]:
        n = len(self.ids)
        for step in range(n):
            gid = self.ids[(i + step) % n]
            if self.bad[gid]:
                continue
            try:
                image, image_clip = self.load(gid)
            except UserError as e:
                self.bad[gid] = 1  # in shared memory: every worker and the main process see it
                log.debug("skipping unreadable image: %s", e)
                continue
            sample: dict[str, Any] = {"image": image, "image_clip": image_clip, "path": self.files[gid]}
            if self.latents is not None:
                sample["latent"] = self.latents[gid]
            if self.captions is not None:
                caps = self.captions[gid]
                k = int(torch.randint(len(caps), ())) if self.random_caption and len(caps) > 1 else 0
                sample["caption"] = caps[k]
            return sample
        raise UserError(f"{self.root}: no readable image left in this split ({n} files, all unreadable)")

