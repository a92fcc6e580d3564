"""Real face domains (human / anime / dog): an image-folder LightningDataModule.

Batches are dicts::

    image       [B, 3, R, R]      float32 in [-1, 1], R = the domain resolution (generator input side)
    image_clip  [B, 3, C, C]      float32 in [-1, 1], C = clip_resolution (224); the CLIP wrapper
                                  normalises it itself
    latent      [B, num_ws, w_dim] (only with a latents file: e.g. e4e W+ codes)
    caption     list[str] of B    (only with a captions file; train: a random caption of the image,
                                  val/test: its first caption)
    path        list[str] of B    paths relative to ``root`` (POSIX separators)

File formats are in :mod:`src.data.face_files`; the split rules and the skipping of unreadable
images in :mod:`src.data.faces`. :attr:`FacesDataModule.num_skipped` counts the skipped files; the
module logs the count once (at teardown, or via :meth:`FacesDataModule.log_skipped`). ``setup``
raises UserError when no image can be read at all.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from src.data.face_files import list_images, match_latents, read_captions, read_latents_file
from src.data.faces import FaceImageDataset, split_files
from src.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS
from src.utils.errors import UserError

log = logging.getLogger(__name__)


class FacesDataModule(pl.LightningDataModule):
    """Image-folder data for a real face domain (formats in :mod:`src.data.face_files`).

    Args mirror ``domain.data`` (root, latents, captions, *_list, *_fraction, align) plus the
    domain ``resolution`` and loader settings.
    """

    def __init__(self, root: Optional[str] = None, resolution: int = 1024, batch_size: int = 4,
                 num_workers: int = 0, seed: int = 0, latents: Optional[str] = None,
                 captions: Optional[str] = None, train_list: Optional[str] = None,
                 val_list: Optional[str] = None, test_list: Optional[str] = None,
                 val_fraction: float = 0.05, test_fraction: float = 0.05, align: bool = False,
                 clip_resolution: int = 224, max_pixels: int = DEFAULT_MAX_PIXELS,
                 eval_batch_size: Optional[int] = None, pin_memory: bool = False, drop_last: bool = True):
        super().__init__()
        self.save_hyperparameters(logger=False)
        if root is None or str(root).strip() == "":
            raise UserError("domain.data.root is not set: point it at the folder of face images")
        for name, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= float(frac) < 1.0:
                raise UserError(f"domain.data.{name} must be in [0, 1), got {frac}")
        if int(batch_size) < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if int(resolution) < 4 or int(clip_resolution) < 4:
            raise UserError(f"resolution and clip_resolution must be >= 4, got {resolution}, {clip_resolution}")
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.clip_resolution = int(clip_resolution)
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.latents_path = latents
        self.captions_path = captions
        self.lists = {"train": train_list, "val": val_list, "test": test_list}
        self.fractions = {"val": float(val_fraction), "test": float(test_fraction)}
        self.align = bool(align)
        self.max_pixels = int(max_pixels)
        self.pin_memory = bool(pin_memory)
        self.drop_last = bool(drop_last)

        self.files: list[str] = []
        self.split_ids: dict[str, list[int]] = {}
        self.bad: Optional[torch.Tensor] = None
        self.latents: Optional[torch.Tensor] = None
        self.captions: Optional[list[list[str]]] = None
        self.num_missing_latents = 0
        self.num_missing_captions = 0
        self.datasets: dict[str, FaceImageDataset] = {}
        self._logged_skipped = 0
        self._pending_skipped: list[str] = []

    @classmethod
    def from_config(cls, domain_cfg: Any, **kwargs: Any) -> "FacesDataModule":
        """Build from a composed ``domain`` config (uses ``resolution`` and ``data.*``)."""
        data = dict(domain_cfg["data"])
        return cls(resolution=int(domain_cfg["resolution"]), **data, **kwargs)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def num_skipped(self) -> int:
        """How many distinct files were found unreadable so far (all workers together)."""
        return 0 if self.bad is None else int(self.bad.sum())

    @property
    def skipped_files(self) -> list[str]:
        """Relative paths of the unreadable files found so far."""
        if self.bad is None:
            return []
        return [self.files[i] for i in torch.nonzero(self.bad).flatten().tolist()]

    def log_skipped(self) -> None:
        """Log the unreadable-file count once (again only if it grew since)."""
        n = self.num_skipped
        if n > self._logged_skipped:
            example = self.skipped_files[0]
            log.warning("skipped %d unreadable image file(s) under %s (e.g. %s)", n, self.root, example)
            self._logged_skipped = n

    # ------------------------------------------------------------------ setup
    def setup(self, stage: Optional[str] = None) -> None:
        if self.datasets:
            return  # already set up (Lightning calls setup once per stage)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: image folder not found (set domain.data.root)")
        self.files = list_images(self.root)
        if not self.files:
            raise UserError(f"{self.root}: no image files found (looked for {' '.join(IMAGE_EXTENSIONS)})")
        if self.align:
            from src.data.alignment import import_dlib, landmark_predictor
            import_dlib()
            landmark_predictor()  # fail now (missing model files), not in a worker mid-epoch
        n = len(self.files)
        # one flag per file in shared memory, so DataLoader workers report what they skip
        self.bad = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._apply_pending_skipped()
        keep = [True] * n
        if self.latents_path is not None:
            self.latents, has = match_latents(read_latents_file(self.latents_path), self.files, str(self.latents_path))
            self.num_missing_latents = has.count(False)
            keep = [k and h for k, h in zip(keep, has)]
            if self.num_missing_latents:
                log.warning("%d of %d images have no latent in %s and are left out",
                            self.num_missing_latents, n, self.latents_path)
        if self.captions_path is not None:
            self.captions = read_captions(self.captions_path, self.files)
            has = [bool(c) for c in self.captions]
            self.num_missing_captions = has.count(False)
            if not any(has):
                raise UserError(f"{self.captions_path}: no caption matches an image under {self.root}")
            keep = [k and h for k, h in zip(keep, has)]
            if self.num_missing_captions:
                log.warning("%d of %d images have no caption in %s and are left out",
                            self.num_missing_captions, n, self.captions_path)
        if not any(keep):
            raise UserError(f"{self.root}: no image has both a latent and a caption")
        splits = split_files(self.files, self.lists, self.fractions, self.seed, self.root)
        self.split_ids = {s: [g for g in ids if keep[g]] for s, ids in splits.items()}
        if not self.split_ids["train"]:
            raise UserError(f"{self.root}: the train split has no image with a latent/caption")
        self._probe_one_readable()
        common = dict(root=self.root, files=self.files, bad=self.bad, resolution=self.resolution,
                      clip_resolution=self.clip_resolution, latents=self.latents, captions=self.captions,
                      align=self.align, max_pixels=self.max_pixels)
        self.datasets = {s: FaceImageDataset(ids=ids, random_caption=(s == "train"), **common)
                         for s, ids in self.split_ids.items()}
        log.info("faces %s: %d images (train %d, val %d, test %d)", self.root, n,
                 len(self.split_ids["train"]), len(self.split_ids["val"]), len(self.split_ids["test"]))

    def _probe_one_readable(self) -> None:
        """Find one usable image (in split order) so a folder of junk fails now, not mid-epoch."""
        probe = FaceImageDataset(self.root, self.files, [], self.bad, self.resolution, self.clip_resolution,
                                 align=self.align, max_pixels=self.max_pixels)
        first_error = None
        for split in ("train", "val", "test"):
            for gid in self.split_ids[split]:
                try:
                    probe.load(gid)
                    return
                except UserError as e:
                    self.bad[gid] = 1
                    first_error = first_error or str(e)
        raise UserError(f"{self.root}: none of the {len(self.files)} image files is usable "
                        f"(first problem: {first_error})")

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        ds = self.datasets[split]
        bs = self.batch_size if train else self.eval_batch_size
        return DataLoader(
            ds, batch_size=bs, shuffle=train,
            generator=torch.Generator().manual_seed(self.seed) if train else None,
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            # full batches in training (the contrastive loss wants B distinct prompts), if possible
            drop_last=train and self.drop_last and len(ds) >= bs,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        """The val loader, or [] (no validation) when the split is empty (val_fraction=0)."""
        if not self.datasets:
            self.setup()
        return self._loader("val", train=False) if self.split_ids["val"] else []

    def test_dataloader(self) -> DataLoader | list:
        """The test loader, or [] when the split is empty (test_fraction=0)."""
        if not self.datasets:
            self.setup()
        return self._loader("test", train=False) if self.split_ids["test"] else []

    def teardown(self, stage: Optional[str] = None) -> None:
        self.log_skipped()

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped_files}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # a resumed run need not re-discover the same bad files (applied now or at setup)
        self._pending_skipped = list(state_dict.get("skipped", []))
        self._apply_pending_skipped()

    def _apply_pending_skipped(self) -> None:
        if self.bad is None or not self._pending_skipped:
            return
        index = {f: i for i, f in enumerate(self.files)}
        for f in self._pending_skipped:
            if f in index:
                self.bad[index[f]] = 1
        self._pending_skipped = []
