"""Lightning data modules over the synthetic renderer.

SyntheticDataModule streams rendered, captioned faces; batches are dicts
    image [B, 3, R, R] in [-1, 1], caption list[str] (B), params [B, P] (natural units),
    concept [B] long (index into vocabulary.CONCEPTS, -1 = none), target_params [B, P]
Modes:
    'clip'     faces showing a concept's preset at a random strength + a caption of it (CLIP training)
    'animator' neutral-ish faces (image and params are the *input*), a prompt each, concepts distinct
               within a batch (contrastive loss); target_params = preset applied at strength 1
    'gan'      the natural expression distribution of sample_params, identity captions (GAN training)
Batches are produced whole (one vectorised render per batch), so the DataLoaders use batch_size=None.
Every batch comes from its own generator seeded by (seed, split, rank, world size, worker, number of
workers, batch index): streams are reproducible, and ranks and workers never repeat each other.

RenderIndexDataModule is the stub for modules that render on their own device (the oracle): it
yields step indices only.

The training loaders of both are resumable (src/data/resume.py): a checkpoint records how many
batches of the epoch were trained on, and a resumed run's stream continues at the next one.
"""
from __future__ import annotations

import itertools
from typing import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from src.data.ranks import rank_and_world
from src.data.resume import ResumableLoader, ResumableSampler, ResumableStream, batches_consumed
from src.embedded import vocabulary
from src.embedded.params import neutral_params, sample_params
from src.embedded.render import render
from src.utils.errors import UserError
from src.utils.seeds import derive_seed

MODES = ("clip", "animator", "gan")


class BatchMaker:
    """Makes one batch dict from a CPU generator (see module docstring for the keys)."""

    def __init__(self, mode: str, resolution: int, batch_size: int, concepts: Sequence[int], device: str | torch.device,
                 strength_range: tuple[float, float] = (0.4, 1.0), identity_prob: float = 0.5,
                 neutral_prob: float = 0.1, heldout_captions: bool = False):
        if mode not in MODES:
            raise UserError(f"synthetic data mode must be one of {', '.join(MODES)}, got {mode!r}")
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if mode == "animator" and batch_size > len(concepts):
            raise UserError(f"animator batches need distinct concepts: batch_size {batch_size} > "
                            f"{len(concepts)} concepts")
        lo, hi = strength_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise UserError(f"strength_range must satisfy 0 <= low <= high <= 1, got {strength_range}")
        self.mode, self.resolution, self.batch_size = mode, resolution, batch_size
        self.concepts = torch.tensor(list(concepts), dtype=torch.long)
        self.device = torch.device(device)
        self.strength_range, self.identity_prob, self.neutral_prob = (lo, hi), identity_prob, neutral_prob
        self.heldout = heldout_captions

    def __call__(self, g: torch.Generator, n: int | None = None) -> dict:
        n = self.batch_size if n is None else n
        if self.mode == "gan":
            params = sample_params(n, g)
            concept = torch.full((n,), -1, dtype=torch.long)
            target = params
        else:
            # neutral-ish faces: identities with small expression jitter around neutral
            base = sample_params(n, g, neutral_prob=1.0)
            if self.mode == "animator":
                concept = self.concepts[torch.randperm(len(self.concepts), generator=g)[:n]]
                params = base
                target = vocabulary.apply_preset(base, concept, 1.0)
            else:
                concept = self.concepts[torch.randint(len(self.concepts), (n,), generator=g)]
                none = torch.rand(n, generator=g) < self.neutral_prob
                concept = torch.where(none, torch.full_like(concept, -1), concept)
                lo, hi = self.strength_range
                strength = lo + (hi - lo) * torch.rand(n, generator=g)
                applied = vocabulary.apply_preset(base, concept.clamp(min=0), strength)
                params = torch.where(none.unsqueeze(1), base, applied)
                target = params
        if self.mode == "animator":
            # the paper's sentence half of the time, otherwise any phrasing of the concept
            captions = vocabulary.caption(params, concept, g, identity_prob=0.0, heldout=self.heldout)
            first = (torch.rand(n, generator=g) < 0.5).tolist()
            canonical = [vocabulary.CONCEPTS[c].heldout[0] if self.heldout else vocabulary.prompt(c)
                         for c in concept.tolist()]
            captions = [a if f else b for a, b, f in zip(canonical, captions, first)]
        else:
            captions = vocabulary.caption(params, concept, g, identity_prob=self.identity_prob, heldout=self.heldout)
        params_dev = params.to(self.device)
        return {"image": render(params_dev, self.resolution), "caption": captions, "params": params_dev,
                "concept": concept.to(self.device), "target_params": target.to(self.device)}


class SyntheticStream(ResumableStream):
    """Infinite stream of batches for one (rank, world size); workers split it by seed.

    Batch j of the stream (from ``start``) is worker j % nw's batch j // nw: the loader takes its
    workers' batches in turn, so the stream is the same from any ``start``."""

    def __init__(self, maker: BatchMaker, seed: int, rank: int = 0, world_size: int = 1, split: str = "train"):
        super().__init__()
        self.maker, self.seed, self.rank, self.world_size, self.split = maker, seed, rank, world_size, split

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._batches(self.take_start() + wid, nw)

    def _batches(self, first: int, step: int) -> Iterator[dict]:
        for j in itertools.count(first, step):
            g = torch.Generator().manual_seed(
                derive_seed(self.seed, self.split, self.rank, self.world_size, j % step, step, j // step))
            yield self.maker(g)


class FixedBatches(Dataset):
    """A fixed, seed-deterministic set of ``size`` faces as whole batches (item i = batch i)."""

    def __init__(self, maker: BatchMaker, seed: int, size: int, split: str):
        if size < 0:
            raise UserError(f"{split}_size must be >= 0, got {size}")
        self.maker, self.seed, self.size, self.split = maker, seed, size, split
        self._cache: dict[int, dict] = {}

    def __len__(self) -> int:
        return -(-self.size // self.maker.batch_size)

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i not in self._cache:
            n = min(self.maker.batch_size, self.size - i * self.maker.batch_size)
            g = torch.Generator().manual_seed(derive_seed(self.seed, self.split, i))
            self._cache[i] = self.maker(g, n)
        return self._cache[i]


class SyntheticDataModule(pl.LightningDataModule):
    """Synthetic captioned faces (see module docstring).

    resolution: render size; batch_size: faces per batch (per rank); num_workers: DataLoader workers
    (0 with device='cuda': rendering then runs on the GPU in the main process); seed: base seed;
    val_size/test_size: sizes of the fixed sets; device: 'cpu' | 'cuda' | 'cuda:k' render device;
    mode: 'clip' | 'animator' | 'gan'; concepts: concept names (default: all); strength_range: preset
    strength for 'clip'; identity_prob: chance of an identity sentence in a 'clip' caption;
    neutral_prob: chance of a concept-free face in 'clip'; test_heldout: test captions use the
    held-out paraphrases; rank/world_size: override the DDP rank detection (tests).
    """

    def __init__(self, resolution: int = 128, batch_size: int = 32, num_workers: int = 0, seed: int = 0,
                 val_size: int = 256, test_size: int = 256, device: str = "cpu", mode: str = "clip",
                 concepts: Sequence[str] | None = None, strength_range: Sequence[float] = (0.4, 1.0),
                 identity_prob: float = 0.5, neutral_prob: float = 0.1, test_heldout: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        super().__init__()
        dev = torch.device(device)
        if dev.type == "cuda" and num_workers > 0:
            raise UserError("GPU rendering runs in the main process: use num_workers=0 with device='cuda'")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError("data.device is 'cuda' but no CUDA device is available")
        if num_workers < 0:
            raise UserError(f"num_workers must be >= 0, got {num_workers}")
        names = list(concepts) if concepts is not None else vocabulary.CONCEPT_NAMES
        self.concept_ids = [vocabulary.index(c) for c in names]
        if len(set(self.concept_ids)) != len(self.concept_ids):
            raise UserError("data.concepts lists a concept twice")
        self.resolution, self.batch_size, self.num_workers, self.seed = resolution, batch_size, num_workers, seed
        self.val_size, self.test_size, self.device, self.mode = val_size, test_size, dev, mode
        self.strength_range = tuple(float(x) for x in strength_range)
        self.identity_prob, self.neutral_prob, self.test_heldout = identity_prob, neutral_prob, test_heldout
        self._rank, self._world = rank, world_size
        self.maker = self._maker(False)  # validates the arguments now
        self._val: FixedBatches | None = None
        self._test: FixedBatches | None = None

    def _maker(self, heldout: bool) -> BatchMaker:
        return BatchMaker(self.mode, self.resolution, self.batch_size, self.concept_ids, self.device,
                          self.strength_range, self.identity_prob, self.neutral_prob, heldout)

    def rank_world(self) -> tuple[int, int]:
        """(global rank, world size): explicit override, else the trainer's (src.data.ranks)."""
        return rank_and_world(self, self._rank, self._world)

    def setup(self, stage: str | None = None) -> None:
        if self._val is None:
            self._val = FixedBatches(self.maker, self.seed, self.val_size, "val")
            self._test = FixedBatches(self._maker(self.test_heldout), self.seed, self.test_size, "test")

    def _loader(self, ds) -> DataLoader:
        cpu = self.device.type == "cpu"
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=False,
                          persistent_workers=self.num_workers > 0 and cpu and isinstance(ds, IterableDataset))

    def train_dataloader(self) -> DataLoader:
        rank, world = self.rank_world()
        return ResumableLoader(SyntheticStream(self.maker, self.seed, rank, world, "train"), batch_size=None,
                               num_workers=self.num_workers, persistent_workers=self.num_workers > 0
                               and self.device.type == "cpu", progress=lambda: batches_consumed(self.trainer))

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._val)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self._test)


class _Counter(ResumableStream):
    def __iter__(self):
        return itertools.count(self.take_start())


class _Range(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


class RenderIndexDataModule(pl.LightningDataModule):
    """Data for modules that render their own batches (oracle, GAN, CLIP): only indices.

    train yields 0, 1, 2, ... forever, or ``steps_per_epoch`` indices per epoch when given (an
    epoch is then a bookkeeping unit; every rank steps through all of them); val/test yield batch
    indices 0..val_batches-1 / 0..test_batches-1 (split across DDP ranks), from which the module
    seeds its renders. A resumed run's indices continue where the checkpoint's run stopped.
    """

    def __init__(self, val_batches: int = 4, test_batches: int = 4, steps_per_epoch: int | None = None):
        super().__init__()
        if val_batches < 0 or test_batches < 0:
            raise UserError("val_batches and test_batches must be >= 0")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise UserError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
        self.val_batches, self.test_batches, self.steps_per_epoch = val_batches, test_batches, steps_per_epoch

    def train_dataloader(self) -> DataLoader:
        progress = lambda: batches_consumed(self.trainer)  # noqa: E731
        if self.steps_per_epoch is None:
            return ResumableLoader(_Counter(), batch_size=None, progress=progress)
        data = _Range(self.steps_per_epoch)
        return ResumableLoader(data, batch_size=None, sampler=ResumableSampler(data), progress=progress)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Range(self.val_batches), batch_size=None)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Range(self.test_batches), batch_size=None)
