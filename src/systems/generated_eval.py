"""Validation/test hooks shared by LightningModules that generate their own evaluation data."""
from __future__ import annotations

from typing import Any


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
