"""Batches of prompts for the animator (any domain), the same under any number of DDP ranks.

Each item of the datasets is already a whole batch (the DataLoader uses ``batch_size=None``):

    dict(caption=list[str] (B), concept=LongTensor[B], seed=LongTensor[B],
         candidates=list[str] (M <= B * world): the distinct prompts of the GLOBAL batch)
    (+ ws=[B,num_ws,w_dim] or [B,w_dim] when a latents file is given)
    (+ input_caption=list[str] (B), a random phrasing of each sample's concept that the animator
       reads instead of its caption, with data.phrasings; the losses still use ``caption``)
    (+ photo=[B,3,S,S] float32 in [-1,1], the real photo of each ws, with clip_image=photo;
       S = photo_size, 224 by default; see src/data/photos.py)

Why global batches: training with k DDP ranks of B samples each must be exactly training with
one process of k*B samples (same seed -> same weights up to rounding). So training item i is
a *global* batch of B*world samples, a pure function of (seed, split, i, B*world), and rank r
takes its samples [r*B, (r+1)*B). With world = 1 item i is bit for bit what it was before
there were global batches (same generator, same draws in the same order).

* Prompts are distinct within a global batch when B*world <= number of prompts; beyond that
  further seeded permutations of the prompts are appended, so a prompt appears at most
  ceil(B*world / P) times.
* ``ws`` is drawn from the bank (the split's part of the latents file) as a function of the same
  (seed, split, i) stream; with clip_image=photo each sample's photo is decoded lazily (in the
  DataLoader workers, only for this rank's slice). A photo that fails to decode mid-run hands its
  sample to the next code of the bank with a readable photo (``ws`` and ``photo`` both), so the
  global batch is still the same on every rank (src.data.photos.PhotoBank).
* ``seed`` gives every sample its own latent seed (input faces independent of the split).
* ``candidates`` lists the global batch's distinct prompts in order of first appearance; every
  rank gets the same list, so every rank can build the contrastive loss's negatives of the
  union batch without any collective (with world = 1 and B <= P it equals ``caption``).
* Every rank iterates the same global items in the same order: the training loader's sampler
  (:class:`SameOrderOnEveryRank`) draws one permutation per epoch from (seed, epoch) and is a
  DistributedSampler subclass, so Lightning neither replaces it by its rank-sharding sampler
  nor forgets to call ``set_epoch`` (also after a resume, with the restored epoch).
  An epoch is ``train_batches`` steps whatever the number of ranks (training is step-based).
* A resumed run continues the stopped one batch for batch: the training loader
  (:class:`src.data.resume.ResumableLoader`) saves (epoch, batches done) in every checkpoint and
  the sampler leaves the done batches of that epoch out (src/data/resume.py).

Validation/test items are batches of B (world = 1 items) that Lightning's DistributedSampler
shards over the ranks, as before; their metrics are averaged with sync_dist.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.data.face_files import read_latents_file
from src.data.photos import PHOTO_SIZE, PhotoBank, first_readable, paired_photos
from src.data.ranks import rank_and_world
from src.data.resume import ResumableLoader, ResumableSampler, batches_consumed
from src.utils.errors import UserError
from src.utils.seeds import derive_seed

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}
CLIP_IMAGES = ("reconstruction", "photo")


def make_prompts(template: str, concepts: Sequence[str]) -> list[str]:
    """'The person is {}.' x ['smiling', ...] -> ['The person is smiling.', ...] (distinct, order kept)."""
    if "{}" not in template:
        raise UserError(f"prompt template must contain '{{}}', got '{template}'")
    out = [template.format(c) for c in concepts]
    if len(set(out)) != len(out):
        raise UserError("domain.prompts.concepts contains duplicates")
    return out


def training_phrasings(phrasings: Mapping[str, Sequence[str]] | None, concepts: Sequence[str],
                       prompts: Sequence[str]) -> list[list[str]] | None:
    """Per prompt, the sentences the animator may read for it in training: the prompt itself, then
    the concept's phrasings from ``phrasings`` {concept: [sentences]} (see PromptDataModule)."""
    if phrasings is None:
        return None
    if isinstance(phrasings, str):
        raise UserError(f"data.phrasings='{phrasings}' names a source the run resolves (train.py); the data "
                        "module itself takes {concept: [sentences]}")
    missing = [c for c in concepts if not phrasings.get(c)]
    if missing:
        raise UserError(f"data.phrasings has no sentences for {', '.join(missing)}")
    return [list(dict.fromkeys([p, *map(str, phrasings[c])])) for c, p in zip(concepts, prompts)]


def distinct_in_order(items: Sequence[str]) -> list[str]:
    """The distinct entries of ``items`` in order of first appearance."""
    return list(dict.fromkeys(items))


class PromptBatches(Dataset):
    """``length`` batches; item i is rank ``rank``'s slice of global batch i (see the module docstring).

    batch_size: samples per rank (B); the global batch has B * world_size samples.
    latents: optional bank [M, num_ws, w_dim] (or [M, w_dim]) of input faces (e.g. e4e codes, as the
    paper trains on); each sample then carries a code drawn from it instead of a sampled face.
    photos: optional :class:`~src.data.photos.PhotoBank` aligned with ``latents`` (its M photos): each
    sample then also carries the photo of its code (``photo``).
    """

    def __init__(self, prompts: Sequence[str], batch_size: int, length: int, seed: int, split: str,
                 latents: torch.Tensor | None = None, rank: int = 0, world_size: int = 1,
                 photos: PhotoBank | None = None, phrasings: Sequence[Sequence[str]] | None = None):
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not prompts:
            raise UserError("the domain has no prompts")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} of world size {world_size} is out of range")
        if photos is not None and (latents is None or len(photos) != len(latents)):
            raise ValueError("photos must be aligned with a latents bank")
        self.prompts, self.batch_size, self.length = list(prompts), batch_size, length
        self.seed = int(seed) + _SPLIT_OFFSET[split]
        self.latents, self.photos = latents, photos
        self.rank, self.world_size = rank, world_size
        if phrasings is not None and (len(phrasings) != len(self.prompts) or not all(phrasings)):
            raise ValueError("phrasings must give every prompt at least one sentence")
        self.phrasings = None if phrasings is None else [list(p) for p in phrasings]

    def __len__(self) -> int:
        return self.length

    def _draw(self, index: int) -> tuple[dict[str, Any], torch.Tensor | None]:
        """Global batch ``index`` without its faces, and the bank index drawn for each sample."""
        if not 0 <= index < self.length:
            raise IndexError(index)
        size = self.batch_size * self.world_size
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        # first permutation as the batch-of-B items always drew it; more only when size > P
        perms = [torch.randperm(len(self.prompts), generator=g)]
        while len(perms) * len(self.prompts) < size:
            perms.append(torch.randperm(len(self.prompts), generator=g))
        concept = torch.cat(perms)[:size]
        seeds = torch.randint(0, 2**31 - 1, (size,), generator=g)
        captions = [self.prompts[int(c)] for c in concept]
        item = dict(caption=captions, concept=concept, seed=seeds, candidates=distinct_in_order(captions))
        picks = None if self.latents is None else torch.randint(0, len(self.latents), (size,), generator=g)
        if self.phrasings is not None:  # drawn last: the draws above are those of a run without phrasings
            pick = torch.randint(0, 2**31 - 1, (size,), generator=g)
            item["input_caption"] = [self.phrasings[int(c)][int(k) % len(self.phrasings[int(c)])]
                                     for c, k in zip(concept, pick)]
        return item, picks

    def _add_faces(self, item: dict[str, Any], picks: torch.Tensor | None) -> dict[str, Any]:
        if picks is not None:
            if self.photos is not None:  # decoded here, i.e. in a worker; a broken file moves to the next code
                picks, item["photo"] = self.photos.batch(picks)
            item["ws"] = self.latents[picks]
        return item

    def global_item(self, index: int) -> dict[str, Any]:
        """Global batch ``index``: all B*world samples (caption, concept [G], seed [G], candidates, ws, photo)."""
        return self._add_faces(*self._draw(index))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item, picks = self._draw(index)
        if self.world_size > 1:
            lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
            # clone: a view would carry the whole global tensor's storage through worker pipes
            item = {k: v if k == "candidates" else v[lo:hi] if isinstance(v, list) else v[lo:hi].clone()
                    for k, v in item.items()}
            picks = None if picks is None else picks[lo:hi]
        return self._add_faces(item, picks)  # this rank's faces only: photos are decoded for its slice


class SameOrderOnEveryRank(ResumableSampler):
    """All indices of ``dataset`` in one seeded permutation per epoch, the SAME on every rank.

    A DistributedSampler (num_replicas 1) only so that Lightning keeps it: Lightning injects its
    rank-sharding sampler into loaders whose sampler is not a DistributedSampler, and it calls
    ``set_epoch`` on the loader's sampler at every epoch start (the restored epoch after a resume).
    The permutation depends on (seed, epoch) only, never on the rank or the number of workers
    (a map-style DataLoader returns its workers' items in sampler order). ``start`` leaves out the
    batches a resumed run has already trained on (src/data/resume.py).
    """

    shuffled = True

    def order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed("prompt-batches/order", self.seed, epoch))
        return torch.randperm(len(self.dataset), generator=g).tolist()


def split_latents(latents: torch.Tensor | Sequence, split: str, eval_fraction: float = 0.05) -> torch.Tensor | Sequence:
    """Disjoint, deterministic parts of a latent bank (or of a list aligned with one): the last
    ``eval_fraction`` is test, the ``eval_fraction`` before it validation, the rest training (at
    least one code each)."""
    n = len(latents)
    k = max(1, int(round(n * eval_fraction)))
    if n < 3 * k:
        raise UserError(f"the latents file holds {n} codes: too few for train/val/test splits")
    return {"train": latents[: n - 2 * k], "val": latents[n - 2 * k: n - k], "test": latents[n - k:]}[split]


class PromptDataModule(pl.LightningDataModule):
    """Prompt batches for training/validation/testing of the animator.

    prompts: ``{template, concepts}`` (the domain's ``prompts`` node).
    batch_size: samples per rank; a training step sees batch_size * world_size (global batch).
    train_batches: global batches per training epoch (training is step-based; each epoch draws a new
    order of them from (seed, epoch)). rank/world_size: override the rank detection (tests).
    latents: a file of input faces (src/data/face_files.py formats); null: sampled faces.
    clip_image: what the CLIP image tower and LPIPS are shown of the input face: ``reconstruction``
    (G(ws), nothing more in the batch) or ``photo`` (the authors': the real photo each code was
    inverted from; needs ``latents`` keyed by image name and the ``photos`` folder; the batch gains
    ``photo`` [B, 3, photo_size, photo_size] in [-1, 1], src/data/photos.py). Only the codes with a
    photo are used, in the sorted order of the image files, before the train/val/test split.
    phrasings: null (the animator reads each sample's prompt) or {concept: [sentences]}: in training
    it reads one of its concept's sentences instead (``input_caption``), so that it learns to answer
    other wordings of the same concept. ``data.phrasings=vocabulary`` in a run gives the embedded
    vocabulary's training phrasings (src/embedded/phrasings.py); its held-out paraphrases stay
    unseen (``evaluate.py phrasings=heldout``). Validation and test use the prompts.
    """

    def __init__(self, prompts: Mapping[str, Any], batch_size: int = 4, seed: int = 0, train_batches: int = 1000,
                 val_batches: int = 4, test_batches: int = 8, num_workers: int = 0, latents: str | None = None,
                 rank: int | None = None, world_size: int | None = None, clip_image: str = "reconstruction",
                 photos: str | None = None, photo_size: int = PHOTO_SIZE,
                 phrasings: Mapping[str, Sequence[str]] | None = None):
        super().__init__()
        if clip_image not in CLIP_IMAGES:
            raise UserError(f"data.clip_image must be one of {', '.join(CLIP_IMAGES)}, got '{clip_image}'")
        self.latents, self.photo_paths, self.photo_size = None, None, int(photo_size)
        if clip_image == "photo":
            if not latents:
                raise UserError("data.clip_image=photo needs data.latents: a file of codes keyed by the names "
                                "of the photos they were inverted from (e.g. e4e W+ codes)")
            if not photos:
                raise UserError("data.clip_image=photo needs data.photos: the folder of the photos the codes "
                                "were inverted from")
            if self.photo_size < 1:
                raise UserError(f"data.photo_size must be >= 1, got {photo_size}")
            self.latents, self.photo_paths = paired_photos(latents, photos)
            first_readable(self.photo_paths, self.photo_size)
        elif latents:  # input faces from a file (e4e W+ codes ...) instead of sampled ones
            bank = read_latents_file(latents)
            bank = torch.stack(list(bank.values())) if isinstance(bank, dict) else bank
            self.latents = bank.float()
        self.prompt_list = make_prompts(prompts["template"], list(prompts["concepts"]))
        self.phrasings = training_phrasings(phrasings, list(prompts["concepts"]), self.prompt_list)
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not self.prompt_list:
            raise UserError("domain.prompts.concepts is empty")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.lengths = {"train": train_batches, "val": val_batches, "test": test_batches}
        self._rank, self._world = rank, world_size

    def rank_world(self) -> tuple[int, int]:
        """(global rank, world size): explicit override, else the trainer's (src.data.ranks)."""
        return rank_and_world(self, self._rank, self._world)

    def dataset(self, split: str, rank: int = 0, world_size: int = 1) -> PromptBatches:
        bank = split_latents(self.latents, split) if self.latents is not None else None
        photos = None
        if self.photo_paths is not None:
            photos = PhotoBank(split_latents(self.photo_paths, split), self.photo_size)
        return PromptBatches(self.prompt_list, self.batch_size, self.lengths[split], self.seed, split, bank,
                             rank=rank, world_size=world_size, photos=photos,
                             phrasings=self.phrasings if split == "train" else None)

    def _loader(self, dataset: Dataset) -> DataLoader:
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # this rank's slices of the global batches, in the order every rank uses; resumable
        data = self.dataset("train", *self.rank_world())
        return ResumableLoader(data, batch_size=None, sampler=SameOrderOnEveryRank(data, self.seed), shuffle=False,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                               progress=lambda: batches_consumed(self.trainer))

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("val"))  # batches of B, sharded over ranks by Lightning

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("test"))
