"""Learning-rate schedules shared by the small render-trained networks (oracle, face-id)."""
from __future__ import annotations

import math
from typing import Optional

import pytorch_lightning as pl
import torch


def schedule_length(module: pl.LightningModule, max_steps: Optional[int], default: int = 10_000) -> int:
    """Steps of the schedule: ``max_steps`` if set, else the trainer's max_steps, else ``default``."""
    if max_steps:
        return int(max_steps)
    trainer = getattr(module, "_trainer", None)  # not the property: it raises when detached
    ms = getattr(trainer, "max_steps", -1) if trainer is not None else -1
    return int(ms) if ms and ms > 0 else default


def adamw_warmup_cosine(params, lr: float, weight_decay: float, total: int, warmup: int) -> dict:
    """AdamW with a linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``
    (Lightning's configure_optimizers dict, stepped every step)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(0, int(warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
