"""What makes a resumed run the run it continues: the checkpoint it resumes from, a check that the
checkpoint fits the configured model, and random streams that depend on the step, not on history.

* :func:`resume_checkpoint`: the newest of ``checkpoints/last.ckpt`` and Lightning's SLURM requeue
  checkpoints (``hpc_ckpt_N.ckpt`` in the run folder).
* :func:`check_checkpoint_fits`: a checkpoint of another architecture is one line naming the first
  tensor that differs and the settings that changed, before Lightning tries to load it.
* :class:`StepSeeds`: the global RNGs (torch CPU and CUDA, numpy, random) are seeded from
  (seed, epoch, batch index) before every training batch. Whatever ran in between (validation, a
  restart, a new DataLoader iterator), batch i of a resumed run draws what it drew uninterrupted.
  Every rank gets the same seeds, as ``seed_everything`` gives every rank the same seed.
"""
from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import pytorch_lightning as pl
import torch

from src.utils.errors import UserError
from src.utils.seeds import derive_seed

HPC_CHECKPOINT = re.compile(r"^hpc_ckpt_(\d+)\.ckpt$")  # SLURM requeue checkpoints (src/systems/requeue.py)
_LAST = re.compile(r"^last(-v\d+)?\.ckpt$")  # -vN: what a version counter of ModelCheckpoint would have written


def resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The checkpoint a rerun of ``run_dir`` resumes from (the most recently written of last*.ckpt and
    SLURM's requeue checkpoints), or None."""
    found = []
    if (run_dir / "checkpoints").is_dir():
        found += [p for p in (run_dir / "checkpoints").iterdir() if _LAST.match(p.name)]
    if run_dir.is_dir():
        found += [p for p in run_dir.iterdir() if HPC_CHECKPOINT.match(p.name)]
    found = [p for p in found if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns) if found else None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}


def _changed_settings(saved: Mapping[str, Any], now: Mapping[str, Any], limit: int = 3) -> list[str]:
    a, b = _flat(saved or {}), _flat(now or {})
    keys = [k for k in a if k in b and a[k] != b[k]]
    return [f"model.{k} was {a[k]!r}, now {b[k]!r}" for k in keys[:limit]]


def checkpoint_mismatch(saved: Mapping[str, torch.Tensor], model: torch.nn.Module) -> Optional[str]:
    """The first difference between a checkpoint's ``state_dict`` and ``model``'s, or None.
    Trainable parameters the checkpoint lacks count; frozen ones may be left out of checkpoints."""
    own = model.state_dict()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    for key, value in saved.items():
        if key not in own:
            return f"{key} is in the checkpoint but not in the model"
        if tuple(value.shape) != tuple(own[key].shape):
            return f"{key} is {list(value.shape)} in the checkpoint, {list(own[key].shape)} in the model"
    missing = sorted(trainable - set(saved))
    return f"the checkpoint has no {missing[0]}" if missing else None


def check_checkpoint_fits(path: Path, model: pl.LightningModule, run_name: str) -> None:
    """UserError (one line) when the checkpoint at ``path`` was made with another architecture."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable checkpoint ({first}): delete it to start over, "
                        f"or use another name= than {run_name}") from None
    diff = checkpoint_mismatch(ckpt.get("state_dict") or {}, model)
    if diff is None:
        return
    changed = _changed_settings(ckpt.get("hyper_parameters") or {}, dict(model.hparams))
    raise UserError(f"{path} does not fit this config: {diff}"
                    + (f" ({'; '.join(changed)})" if changed else "")
                    + f": use another name= than {run_name} for a new run, or the run's old settings to resume it")


def restore_error(e: BaseException, path: Path, run_name: str) -> Optional[UserError]:
    """A one-line UserError for an error Lightning raised while loading ``path`` into a model or
    optimiser of another shape (what :func:`check_checkpoint_fits` cannot see), else None."""
    text = str(e)
    known = ("Error(s) in loading state_dict", "loaded state dict contains a parameter group",
             "loaded state dict has a different number of parameter groups", "size of tensor a")
    if not isinstance(e, (RuntimeError, ValueError, KeyError)) or not any(k in text for k in known):
        return None
    detail = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), text.splitlines()[0]).rstrip(".")
    return UserError(f"{path} does not fit this config ({detail}): use another name= than {run_name} for a "
                     "new run, or the run's old settings to resume it")


def seed_global_rngs(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # CPU and every CUDA device


class StepSeeds(pl.Callback):
    """Seed the global RNGs before every training batch from (seed, epoch, batch index)."""

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_global_rngs(derive_seed("train-batch", self.seed, trainer.current_epoch, batch_idx))
