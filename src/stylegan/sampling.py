"""Reproducible faces of a generator: one latent per integer seed."""
from __future__ import annotations

from typing import Sequence

import torch


@torch.no_grad()
def seeded_ws(G, seeds: Sequence[int] | torch.Tensor, truncation_psi: float = 1.0) -> torch.Tensor:
    """W+ latents [N, num_ws, w_dim] of the faces of ``seeds``: z ~ N(0, I) drawn from a CPU generator
    seeded per face (so a face does not depend on the others in the batch, nor on the device), mapped
    with ``truncation_psi`` and no class (zeros when c_dim > 0)."""
    seeds = [int(s) for s in (seeds.tolist() if isinstance(seeds, torch.Tensor) else seeds)]
    device = next(G.parameters()).device
    z = torch.stack([torch.randn(G.z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    return G.mapping(z, torch.zeros(len(seeds), G.c_dim, device=device), truncation_psi=truncation_psi)
