"""SIGTERM (what SLURM and most schedulers send before a kill) and SIGINT (Ctrl-C) stop a training
run at the end of its current step, with the step saved: ``checkpoints/last.ckpt`` (atomically), then
:class:`RunStopped` (train.py: one ``error:`` line, exit 128 + signal: 143 / 130). A second SIGINT
stops at once, without saving.

* :class:`StopSignals` (a context manager around fit and test) installs the handlers; a handler
  only records the signal (and calls a handler that was there before it, e.g. submitit's).
* :class:`SaveAndStop` (a callback) acts on it after the step: all DDP ranks agree first (any
  rank's signal stops every rank at the same step). Lightning's own SIGTERM handling, which can
  stop a run during validation, ends in the same save (``on_exception``).
* SIGUSR1 is left to Lightning: SLURM's auto-requeue saves ``hpc_ckpt_N.ckpt`` and requeues the
  job; the rerun resumes from it (src/systems/resume.py).
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.utilities.exceptions import SIGTERMException

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """A run stopped by a signal; ``exit_code`` is 128 + the signal number (143 SIGTERM, 130 SIGINT)."""

    def __init__(self, message: str, signum: int, quiet: bool = False):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
        self.quiet = quiet  # a DDP rank > 0: rank 0 says it


class _StopRequested(Exception):
    """Raised out of the training loop once the step is saved."""


class StopSignals:
    """While entered: the first SIGTERM / SIGINT is recorded in ``signum`` instead of ending the
    process; a second SIGINT raises KeyboardInterrupt (``forced``). The previous handlers come back
    on exit. Outside the main thread it does nothing (signals go to the main thread only)."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.forced = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if self.signum is None:
            self.signum = signum
            again = " (Ctrl-C again stops at once, unsaved)" if signum == signal.SIGINT else ""
            print(f"{signal.Signals(signum).name}: saving the current step, then stopping{again}",
                  file=sys.stderr, flush=True)
        previous = self._previous.get(signum)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)


class SaveAndStop(pl.Callback):
    """After a training step during which a stop signal came (on any rank): save ``checkpoint``
    (every rank takes part, rank 0 writes) and leave the training loop."""

    def __init__(self, signals: StopSignals, checkpoint: Path):
        self.signals, self.checkpoint = signals, Path(checkpoint)
        self.saved_step: Optional[int] = None

    def requested(self, trainer: pl.Trainer) -> bool:
        """Whether a stop signal came to any rank (every rank must ask at the same point)."""
        mine = self.signals.signum is not None
        if trainer.world_size > 1:  # one tiny all-reduce per step: every rank stops at the same step
            return bool(trainer.strategy.reduce_boolean_decision(mine, all=False))
        return mine

    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.checkpoint)
        self.saved_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.requested(trainer):
            self.save(trainer)
            raise _StopRequested

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_step is None:
            self.save(trainer)


def is_stop(exception: BaseException) -> bool:
    """Whether ``exception`` out of ``trainer.fit`` is a stop of :class:`SaveAndStop` or Lightning's."""
    return isinstance(exception, (_StopRequested, SIGTERMException))
