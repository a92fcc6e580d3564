"""What the embedded domain's training systems share: the learning-rate schedule, the validation/test
plumbing of networks trained on renders made on the fly (oracle, face recogniser) and the hooks of
modules that generate their own evaluation data (GAN, CLIP)."""
from __future__ import annotations

import math
from typing import Any, Optional

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


class RenderTrainedModule(pl.LightningModule):
    """Base of the render-trained LightningModules.

    Subclasses set ``self.net`` (the trained network; or override ``trained_network``) and implement
    ``_eval_step(split, batch)``, ``_eval_end(split) -> metrics`` and ``save_weights(path) -> str``;
    their hparams hold lr, weight_decay, warmup_steps, max_steps and export_path.
    """

    def trained_network(self) -> torch.nn.Module:
        return self.net

    def _eval_step(self, split: str, batch) -> None:
        raise NotImplementedError

    def _eval_end(self, split: str) -> dict:
        raise NotImplementedError

    def save_weights(self, path: str) -> str:
        raise NotImplementedError

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self):
        total = schedule_length(self, self.hparams.max_steps)
        return adamw_warmup_cosine(self.trained_network().parameters(), self.hparams.lr,
                                   self.hparams.weight_decay, total, self.hparams.warmup_steps)

    def on_fit_end(self) -> None:
        if self.hparams.export_path and self.global_rank == 0:
            self.save_weights(self.hparams.export_path)

class GeneratedEvalHooks:
    """Mixin: the module renders its evaluation batches itself from an index (a seed).

    Subclasses define ``_eval_start()``, ``_eval_step(index)`` and ``_eval_end(prefix)``; test
    indices are shifted by ``test_index_offset`` so that test data can be disjoint from validation.
    """

    test_index_offset = 0

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(self.test_index_offset + batch_idx)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
