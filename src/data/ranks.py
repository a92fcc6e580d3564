"""Which DDP rank a data module serves: one rule for every data module of the project."""
from __future__ import annotations

from typing import Any, Optional

import torch


def rank_and_world(datamodule: Any, rank: Optional[int] = None, world_size: Optional[int] = None) -> tuple[int, int]:
    """(global rank, world size) of a LightningDataModule.

    Explicit ``rank``/``world_size`` (tests, offline tools) win; else the attached trainer's; else an
    initialised torch.distributed group's; else (0, 1).
    """
    if rank is not None or world_size is not None:
        return int(rank or 0), int(world_size or 1)
    trainer = getattr(datamodule, "trainer", None)
    if trainer is not None:
        return int(trainer.global_rank), int(trainer.world_size)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1
