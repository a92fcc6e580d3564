"""Batches: the GLOBAL batch (B*K distinct prompts while B*K <= the 28 prompts, else repeats with
every rank's slice still distinct; one latent seed per sample) is a pure function of the step
index and --data-seed, built identically on every rank; rank r takes samples [r*B, (r+1)*B). The
distinct prompts of the global batch go along as ``candidates`` (the contrastive negatives of a
DDP-exact loss; a module that does not know the key ignores it; --no-candidates leaves it out)."""
from __future__ import annotations

import torch

from src.data.prompts import distinct_in_order


def global_batch(step: int, prompts: list[str], size: int, data_seed: int) -> dict:
    """The global batch of ``step``: a pure function of (step, size, data_seed), equal on all ranks.

    Prompt j of the batch is perm[j mod P] for a random permutation of the P prompts, so every run
    of <= P consecutive samples (a rank's slice) is distinct, also when size > P (repeats).
    """
    g = torch.Generator().manual_seed(data_seed * 1_000_003 + step)
    perm = torch.randperm(len(prompts), generator=g)
    concept = torch.stack([perm[j % len(prompts)] for j in range(size)])
    seed = torch.randint(0, 2**31 - 1, (size,), generator=g)
    return dict(caption=[prompts[int(c)] for c in concept], concept=concept, seed=seed)


def local_batch(gb: dict, rank: int, batch: int, device: torch.device, candidates: bool) -> dict:
    lo, hi = rank * batch, (rank + 1) * batch
    # seeds stay on the CPU: they only seed CPU generators (as under Lightning, see measure.py)
    out = dict(caption=gb["caption"][lo:hi], concept=gb["concept"][lo:hi].to(device), seed=gb["seed"][lo:hi])
    if candidates:
        out["candidates"] = distinct_in_order(gb["caption"])
    return out
