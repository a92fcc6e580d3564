"""Batches of distinct prompts for the animator (any domain).

Each item of the datasets is already a whole batch (the DataLoader uses ``batch_size=None``):

    dict(caption=list[str] of B distinct prompts, concept=LongTensor[B], seed=LongTensor[B])
    (+ ws=[B,num_ws,w_dim] or [B,w_dim] when a latents file is given)

``seed`` gives every sample its own latent seed, so the input faces are reproducible and differ
between DDP ranks (ranks see different item indices through Lightning's DistributedSampler;
items are a pure function of (seed, split, index)). The contrastive loss needs the prompts of a
batch to be distinct, hence batch_size <= number of concepts.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.utils.errors import UserError

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003, "test": 2_000_003}


def make_prompts(template: str, concepts: Sequence[str]) -> list[str]:
    """'The person is {}.' x ['smiling', ...] -> ['The person is smiling.', ...] (distinct, order kept)."""
    if "{}" not in template:
        raise UserError(f"prompt template must contain '{{}}', got '{template}'")
    out = [template.format(c) for c in concepts]
    if len(set(out)) != len(out):
        raise UserError("domain.prompts.concepts contains duplicates")
    return out


class PromptBatches(Dataset):
    """``length`` batches of ``batch_size`` distinct prompts; item i is fixed by (seed, split, i).

    latents: optional bank [M, num_ws, w_dim] (or [M, w_dim]) of input faces (e.g. e4e codes, as the
    paper trains on); each batch then carries ``ws`` drawn from it instead of sampled faces.
    """

    def __init__(self, prompts: Sequence[str], batch_size: int, length: int, seed: int, split: str,
                 latents: torch.Tensor | None = None):
        if batch_size > len(prompts):
            raise UserError(f"batch_size {batch_size} exceeds the {len(prompts)} distinct prompts of the domain "
                            "(the contrastive loss needs distinct prompts in a batch)")
        self.prompts, self.batch_size, self.length = list(prompts), batch_size, length
        self.seed = int(seed) + _SPLIT_OFFSET[split]
        self.latents = latents

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        g = torch.Generator().manual_seed(self.seed * 7919 + index)
        concept = torch.randperm(len(self.prompts), generator=g)[: self.batch_size]
        seeds = torch.randint(0, 2**31 - 1, (self.batch_size,), generator=g)
        item = dict(caption=[self.prompts[int(c)] for c in concept], concept=concept, seed=seeds)
        if self.latents is not None:
            item["ws"] = self.latents[torch.randint(0, len(self.latents), (self.batch_size,), generator=g)]
        return item


def split_latents(latents: torch.Tensor, split: str, eval_fraction: float = 0.05) -> torch.Tensor:
    """Disjoint, deterministic parts of a latent bank: the last ``eval_fraction`` is test, the
    ``eval_fraction`` before it validation, the rest training (at least one code each)."""
    n = len(latents)
    k = max(1, int(round(n * eval_fraction)))
    if n < 3 * k:
        raise UserError(f"the latents file holds {n} codes: too few for train/val/test splits")
    return {"train": latents[: n - 2 * k], "val": latents[n - 2 * k: n - k], "test": latents[n - k:]}[split]


class PromptDataModule(pl.LightningDataModule):
    """Prompt batches for training/validation/testing of the animator.

    prompts: ``{template, concepts}`` (the domain's ``prompts`` node).
    train_batches: batches per training epoch (training is step-based; epochs only re-seed nothing).
    """

    def __init__(self, prompts: Mapping[str, Any], batch_size: int = 4, seed: int = 0, train_batches: int = 1000,
                 val_batches: int = 4, test_batches: int = 8, num_workers: int = 0, latents: str | None = None):
        super().__init__()
        self.latents = None
        if latents:  # input faces from a file (e4e W+ codes ...) instead of sampled ones
            from src.data.faces import read_latents_file

            bank = read_latents_file(latents)
            bank = torch.stack(list(bank.values())) if isinstance(bank, dict) else bank
            self.latents = bank.float()
        self.prompt_list = make_prompts(prompts["template"], list(prompts["concepts"]))
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed, self.num_workers = batch_size, seed, num_workers
        self.lengths = {"train": train_batches, "val": val_batches, "test": test_batches}
        # validate batch_size against the vocabulary at construction, not at the first batch
        PromptBatches(self.prompt_list, batch_size, 1, seed, "train")

    def dataset(self, split: str) -> PromptBatches:
        bank = split_latents(self.latents, split) if self.latents is not None else None
        return PromptBatches(self.prompt_list, self.batch_size, self.lengths[split], self.seed, split, bank)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=None, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
