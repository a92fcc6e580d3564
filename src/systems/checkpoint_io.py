"""Lightning checkpoint I/O that writes atomically and never executes code when reading."""
from __future__ import annotations

from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from src.utils.errors import UserError
from src.utils.io import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temp file + rename (a killed run never leaves a truncated last.ckpt); load with
    ``weights_only=True`` (a checkpoint is data, never code)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        with atomic_write(path) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(self, path, map_location: Optional[Any] = None, weights_only: Optional[bool] = None) -> dict[str, Any]:
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except FileNotFoundError:
            raise UserError(f"{path}: checkpoint not found") from None
        except Exception as e:  # truncated zip, foreign pickle globals, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"{path}: not a loadable checkpoint ({first})") from None
