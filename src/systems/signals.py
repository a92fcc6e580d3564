"""SIGTERM (what SLURM and most schedulers send before a kill) and SIGINT (Ctrl-C) stop a training
run at the end of its current step, with the step saved: ``checkpoints/last.ckpt`` (atomically), then
:class:`RunStopped` (train.py: one ``error:`` line, exit 128 + signal: 143 / 130). A second SIGINT
stops at once, without saving.

* :class:`StopSignals` (a context manager around fit and test) installs the handlers; a handler
  only records the signal (and calls a handler that was there before it, e.g. submitit's).
* :class:`SaveAndStop` (a callback) acts on it after the step: all DDP ranks agree first (any
  rank's signal stops every rank at the same step); the step that reaches ``max_steps`` is saved
  the same way (a rerun with a larger ``max_steps`` goes on from it exactly). Lightning's own
  SIGTERM handling, which can stop a run during validation, ends in the same save (``on_exception``).
* Under a spawning strategy (``ddp_spawn``, ``hardware=ddp_cpu``) the ranks are child processes:
  the callback installs the same handlers in each of them, and the parent forwards a signal it gets
  to them as SIGTERM (a Ctrl-C that reached the whole process group stays one stop, not a second
  SIGINT). Rank 0 writes the checkpoint; the parent reads the saved step from it.
* SIGUSR1 is left to Lightning: SLURM's auto-requeue saves ``hpc_ckpt_N.ckpt`` and requeues the
  job; the rerun resumes from it (src/systems/resume.py).
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
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

    def __init__(self, forward_to_children: bool = False) -> None:
        self.signum: Optional[int] = None
        self.received_at: Optional[float] = None  # time.time() of the first signal
        self.forced = False
        self.forward_to_children = forward_to_children  # a spawning strategy: the ranks are our children
        self.owner_pid = os.getpid()
        self._previous: dict[int, Any] = {}

    def __getstate__(self) -> dict:  # sent to spawned ranks: the parent's handlers stay behind
        return {**self.__dict__, "_previous": {}}

    @property
    def in_spawned_rank(self) -> bool:
        """Whether this process is a rank that a spawning strategy started (not the one that made us)."""
        return os.getpid() != self.owner_pid

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

    def reclaim(self) -> None:
        """SIGTERM back to this handler alone after Lightning put its own in front of it: Lightning's
        broadcasts from inside the handler, which deadlocks ranks that get the signal at different
        moments; the callback's per-step agreement does that job."""
        if signal.SIGTERM in self._previous and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.forced = True
            raise KeyboardInterrupt
        if self.forward_to_children and not self.in_spawned_rank:
            for child in multiprocessing.active_children():  # the spawned ranks
                try:
                    os.kill(child.pid, signal.SIGTERM)
                except (ProcessLookupError, TypeError):
                    pass
        if self.signum is None:
            self.signum, self.received_at = signum, time.time()
            if self.in_spawned_rank:  # the parent says it
                return
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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.signals.in_spawned_rank and not self.signals._previous:
            self.signals.__enter__()  # this rank's own handlers (the parent's stay in the parent)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.reclaim()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.signals.reclaim()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.signals.in_spawned_rank:
            self.signals.__exit__(None, None, None)

    def step_saved_by_ranks(self) -> Optional[int]:
        """In the parent of spawned ranks: the step of the checkpoint they wrote after the signal."""
        import torch

        when = self.signals.received_at
        if when is None or not self.checkpoint.is_file() or self.checkpoint.stat().st_mtime < when - 1.0:
            return None
        try:
            return int(torch.load(self.checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])
        except Exception:  # unreadable: say unsaved rather than fail the stop
            return None

    def requested(self, trainer: pl.Trainer) -> bool:
        """Whether a stop signal came to any rank (every rank must ask at the same point)."""
        mine = self.signals.signum is not None
        if trainer.world_size > 1:  # one tiny all-reduce per step: every rank stops at the same step
            return bool(trainer.strategy.reduce_boolean_decision(mine, all=False))
        return mine

    def save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.checkpoint, weights_only=False)
        self.saved_step = int(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.requested(trainer):
            self.save(trainer)
            raise _StopRequested
        if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
            self.save_final_step(trainer)

    def save_final_step(self, trainer: pl.Trainer) -> None:
        """The step that reaches max_steps is saved at its end, as periodic checkpoints are: a rerun
        with a larger max_steps goes on from it exactly. ModelCheckpoint would otherwise write
        last.ckpt after the loop when it has not saved one yet (its periodic saves wait for the
        monitored validation metric); that state records the epoch as finished, and a resume from it
        skips the rest of the epoch's batches. Told that last.ckpt is written, it keeps it."""
        self.save(trainer)
        periodic = trainer.checkpoint_callback
        if periodic is not None and getattr(periodic, "save_last", False) and \
                hasattr(periodic, "_last_checkpoint_saved"):
            periodic._last_checkpoint_saved = str(self.checkpoint)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.saved_step is None:
            self.save(trainer)


def is_stop(exception: BaseException) -> bool:
    """Whether ``exception`` out of ``trainer.fit`` is a stop of :class:`SaveAndStop` or Lightning's."""
    return isinstance(exception, (_StopRequested, SIGTERMException))
