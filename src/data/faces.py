"""Real face domains (human / anime / dog): an image-folder LightningDataModule.

Batches are dicts::

    image       [B, 3, R, R]      float32 in [-1, 1], R = the domain resolution (generator input side)
    image_clip  [B, 3, C, C]      float32 in [-1, 1], C = clip_resolution (224); the CLIP wrapper
                                  normalises it itself
    latent      [B, num_ws, w_dim] (only with a latents file: e.g. e4e W+ codes)
    caption     list[str] of B    (only with a captions file; train: a random caption of the image,
                                  val/test: its first caption)
    path        list[str] of B    paths relative to ``root`` (POSIX separators)

Files
-----
* ``root``: a folder searched recursively for .jpg .jpeg .png .webp .bmp .tif .tiff (any case);
  hidden files/folders (``.name``) are ignored. "The sorted file list" below is the sorted list of
  these relative POSIX paths.
* ``latents`` (.pt / .pth (loaded with ``weights_only=True``), .npy (no pickle), .safetensors):
  either a mapping ``name -> [num_ws, w_dim]`` (name = relative path, file name, or file stem), or
  one array ``[N, num_ws, w_dim]`` aligned with the sorted file list (``N`` must equal its length;
  a .safetensors / .pt dict with a single 3-D entry counts as such an array).
* ``captions``: .json ``{name: caption | [captions]}``, or .txt with one ``name<TAB>caption``
  per line (repeated names add captions), or a folder with ``<relative path minus extension>.txt``
  files holding one caption per line (MM-CelebA-HQ style).
* ``train_list`` / ``val_list`` / ``test_list``: .txt files, one name per line (``#`` comments and
  blank lines ignored). A split without a list takes ``round(fraction * N)`` files (at least 1 for
  a positive fraction) from a permutation seeded by ``seed``; train without a list takes what is
  left. Splits are computed on the full sorted file list, *then* files without a latent/caption
  (when those files are given) are dropped and counted, so splits do not move when coverage changes.

Robustness: an unreadable image (corrupt, truncated, not an image, too large, or no face when
``align=True``) never stops an epoch: the dataset serves the next readable file instead and flags
the bad one in a shared-memory table (visible from DataLoader worker processes), so it is tried
only once. :attr:`FacesDataModule.num_skipped` counts them; the module logs the count once (at
teardown, or via :meth:`FacesDataModule.log_skipped`). ``setup`` raises UserError when no image can
be read at all.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath
from typing import Any, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.images import (DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_image_file, load_pil, pil_to_tensor,
                             resize_square_pil)
from src.utils.errors import UserError

log = logging.getLogger(__name__)

LATENT_EXTENSIONS = (".pt", ".pth", ".npy", ".safetensors")


# ----------------------------------------------------------------------------------- file lists
def list_images(root: str | os.PathLike) -> list[str]:
    """Sorted relative POSIX paths of the image files under ``root`` (recursive, no hidden entries)."""
    r = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(r):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and is_image_file(name):
                out.append(Path(dirpath, name).relative_to(r).as_posix())
    return sorted(out)


def _norm_name(name: str) -> str:
    n = str(name).strip().replace("\\", "/")
    while n.startswith("./"):
        n = n[2:]
    return n


class _NameMatcher:
    """Resolves user-given names to relative paths: exact relative path, else a file name or a
    file stem that is unique under the root."""

    def __init__(self, files: Sequence[str]):
        self.exact = {f: f for f in files}
        self.by_name: dict[str, Optional[str]] = {}
        self.by_stem: dict[str, Optional[str]] = {}
        for f in files:
            p = PurePosixPath(f)
            for table, key in ((self.by_name, p.name), (self.by_stem, p.stem)):
                table[key] = None if key in table else f  # None marks an ambiguous key

    def __call__(self, name: str) -> Optional[str]:
        n = _norm_name(name)
        if n in self.exact:
            return n
        p = PurePosixPath(n)
        for table, key in ((self.by_name, p.name), (self.by_stem, p.stem), (self.by_stem, p.name)):
            hit = table.get(key)
            if hit is not None:
                return hit
        return None


def read_list_file(path: str | os.PathLike) -> list[str]:
    """Names from a split list: one per line; blank lines and ``#`` comments ignored."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: split list file not found")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read split list ({e})") from None
    return [_norm_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]


# ----------------------------------------------------------------------------------- latents
def _as_float_tensor(x: Any, where: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise UserError(f"{where}: latents must be floating point, got {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise UserError(f"{where}: expected a tensor/array of latents, got {type(x).__name__}")
    if not x.is_floating_point():
        raise UserError(f"{where}: latents must be floating point, got {x.dtype}")
    x = x.detach().to(torch.float32).cpu()
    if not torch.isfinite(x).all():
        raise UserError(f"{where}: latents contain NaN or Inf")
    return x


def read_latents_file(path: str | os.PathLike) -> torch.Tensor | dict[str, torch.Tensor]:
    """Read a latents file: one float32 tensor [N, num_ws, w_dim], or a dict name -> [num_ws, w_dim]."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: latents file not found")
    ext = p.suffix.lower()
    try:
        if ext in (".pt", ".pth"):
            try:
                obj = torch.load(p, map_location="cpu", weights_only=True)
            except Exception as e:  # the weights-only unpickler refuses anything but tensors/containers
                raise UserError(f"{p}: not a weights-only torch file of latents ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        elif ext == ".npy":
            try:
                obj = np.load(p, allow_pickle=False)
            except ValueError as e:
                raise UserError(f"{p}: not a plain .npy array ({e})") from None
        elif ext == ".safetensors":
            from safetensors.torch import load_file
            obj = load_file(str(p), device="cpu")
        else:
            raise UserError(f"{p}: unsupported latents format '{p.suffix}' (use {', '.join(LATENT_EXTENSIONS)})")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{p}: cannot read latents ({type(e).__name__}: {e})") from None

    if isinstance(obj, dict):
        if len(obj) == 1:
            (only,) = obj.values()
            if isinstance(only, (torch.Tensor, np.ndarray)) and only.ndim == 3:
                obj = only  # {"latents": [N, L, C]}: an aligned array under a single key
        if isinstance(obj, dict):
            out = {}
            shape = None
            for k, v in obj.items():
                t = _as_float_tensor(v, f"{p} [{k}]")
                if t.dim() == 3 and t.shape[0] == 1:
                    t = t[0]
                if t.dim() != 2:
                    raise UserError(f"{p}: latent '{k}' has shape {list(t.shape)}, expected [num_ws, w_dim]")
                if shape is not None and t.shape != shape:
                    raise UserError(f"{p}: latent '{k}' has shape {list(t.shape)}, others {list(shape)}")
                shape = t.shape
                out[str(k)] = t
            if not out:
                raise UserError(f"{p}: the latents file is empty")
            return out
    t = _as_float_tensor(obj, str(p))
    if t.dim() != 3:
        raise UserError(f"{p}: latents array has shape {list(t.shape)}, expected [N, num_ws, w_dim]")
    return t


def match_latents(data: torch.Tensor | dict[str, torch.Tensor], files: Sequence[str], where: str
                  ) -> tuple[Optional[torch.Tensor], list[bool]]:
    """Latents aligned with ``files``: (tensor [len(files), num_ws, w_dim] with zeros where missing,
    has[i]). An array must have exactly one code per file of the sorted list."""
    if isinstance(data, torch.Tensor):
        if data.shape[0] != len(files):
            raise UserError(f"{where}: the latents array has {data.shape[0]} codes but {len(files)} images were "
                            "found; an array must be aligned with the sorted list of images under root "
                            "(or use a dict keyed by file name)")
        return data, [True] * len(files)
    matcher = _NameMatcher(files)
    shape = next(iter(data.values())).shape
    out = torch.zeros(len(files), *shape)
    has = [False] * len(files)
    index = {f: i for i, f in enumerate(files)}
    for k, v in data.items():
        f = matcher(k)
        if f is not None:
            out[index[f]] = v
            has[index[f]] = True
    if not any(has):
        raise UserError(f"{where}: none of the {len(data)} latent names match an image under root "
                        f"(e.g. '{next(iter(data))}' vs '{files[0]}')")
    return out, has


# ----------------------------------------------------------------------------------- captions
def read_captions(path: str | os.PathLike, files: Sequence[str]) -> list[list[str]]:
    """Captions per file of ``files`` (empty list where none). Formats in the module docstring."""
    p = Path(path)
    matcher = _NameMatcher(files)
    index = {f: i for i, f in enumerate(files)}
    out: list[list[str]] = [[] for _ in files]
    if p.is_dir():
        for i, f in enumerate(files):
            txt = p / PurePosixPath(f).with_suffix(".txt")
            if txt.is_file():
                try:
                    out[i] = [line.strip() for line in txt.read_text(encoding="utf-8").splitlines() if line.strip()]
                except (OSError, UnicodeDecodeError) as e:
                    raise UserError(f"{txt}: cannot read captions ({e})") from None
        return out
    if not p.is_file():
        raise UserError(f"{p}: captions file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read captions ({e})") from None
    pairs: list[tuple[str, str]] = []
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: invalid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise UserError(f"{p}: expected a JSON object {{file name: caption or [captions]}}")
        for k, v in obj.items():
            caps = [v] if isinstance(v, str) else v
            if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
                raise UserError(f"{p}: captions of '{k}' must be a string or a list of strings")
            pairs.extend((k, c) for c in caps)
    elif p.suffix.lower() == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise UserError(f"{p}:{n}: expected 'file name<TAB>caption'")
            k, c = line.split("\t", 1)
            pairs.append((k, c))
    else:
        raise UserError(f"{p}: captions must be a .json file, a .txt file or a folder of .txt files")
    for k, c in pairs:
        f = matcher(k)
        if f is not None and c.strip():
            out[index[f]].append(c.strip())
    return out


# ----------------------------------------------------------------------------------- dataset
class FaceImageDataset(Dataset):
    """One split. Item ``i`` is the ``i``-th file of the split, or the next readable one.

    Args:
        root: image folder.
        files: relative paths of the whole module (the split indexes into it via ``ids``).
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


# ----------------------------------------------------------------------------------- module
class FacesDataModule(pl.LightningDataModule):
    """Image-folder data for a real face domain (see the module docstring for formats).

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

    # ------------------------------------------------------------------ splits
    def _split(self) -> dict[str, list[int]]:
        files = self.files
        matcher = _NameMatcher(files)
        index = {f: i for i, f in enumerate(files)}
        taken: dict[int, str] = {}
        splits: dict[str, list[int]] = {}
        for split, lst in self.lists.items():
            if lst is None:
                continue
            names = read_list_file(lst)
            ids, unknown = [], []
            for name in names:
                f = matcher(name)
                (unknown.append(name) if f is None else ids.append(index[f]))
            if unknown:
                raise UserError(f"{lst}: {len(unknown)} listed file(s) not found under {self.root} "
                                f"(first: '{unknown[0]}')")
            for g in ids:
                if g in taken and taken[g] != split:
                    raise UserError(f"{lst}: '{files[g]}' is also in the {taken[g]} list")
                taken[g] = split
            splits[split] = sorted(set(ids))
            if not splits[split]:
                raise UserError(f"{lst}: the {split} list is empty")
        rest = [g for g in range(len(files)) if g not in taken]
        perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(self.seed)).tolist()
        rest = [rest[k] for k in perm]
        n_total = len(files)
        for split in ("test", "val"):
            if split in splits:
                continue
            frac = self.fractions[split]
            n = int(round(frac * n_total))
            if frac > 0 and n == 0 and n_total >= 3:
                n = 1  # a positive fraction always yields a (tiny) split
            n = min(n, len(rest))
            splits[split], rest = sorted(rest[:n]), rest[n:]
        if "train" not in splits:
            splits["train"] = sorted(rest)
        elif rest:
            log.info("%d file(s) under %s are in no split list and are not used", len(rest), self.root)
        if not splits["train"]:
            raise UserError(f"{self.root}: no images left for training after the val/test split "
                            f"({n_total} found; lower val_fraction/test_fraction or add images)")
        return splits

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
        splits = self._split()
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
