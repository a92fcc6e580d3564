"""Lightning checkpoint I/O that writes atomically and never executes code when reading, and the
clean-up of the temporary files that a write killed mid-way leaves behind."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from src.utils.errors import UserError
from src.utils.io import atomic_write

# what src.utils.io.atomic_write names the temporary file of <stem>.ckpt: .<stem>.<random>.tmp.ckpt, the
# random part mkstemp's 8 characters or <host hash>-<pid>-<8 hex digits>
_TEMP = re.compile(r"^\..+\.(?:[A-Za-z0-9_]{8}|[0-9a-f]{6}-\d+-[0-9a-f]{8})\.tmp\.ckpt$")


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


def checkpoint_temps(folder: Path) -> list[Path]:
    """The temporary files of :class:`AtomicCheckpointIO` in ``folder`` (not below it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _TEMP.match(p.name) and p.is_file())


def remove_checkpoint_temps(folder: Path) -> list[Path]:
    """Delete the temporary files a killed checkpoint write left in ``folder``; only call it while
    holding the run's lock (no other process writes there then). Returns what was removed."""
    removed = []
    for path in checkpoint_temps(folder):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed
