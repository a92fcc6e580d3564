"""SLURM's requeue signal, handled at a step boundary.

Under SLURM with Lightning's auto-requeue (its SLURM environment, on by default), the job gets SIGUSR1
(the environment's ``requeue_signal``) some time before its end. Lightning's own handler saves a
checkpoint from inside the signal handler, i.e. wherever the step happens to be (between backward
and the optimiser step, with the data loader's counters one batch ahead), so the requeued job would
not continue the run exactly. :class:`SlurmRequeue` installs its handler first (Lightning then keeps
out), which only records the signal; after the step every rank agrees, rank 0 writes
``hpc_ckpt_<n>.ckpt`` in the run folder (the name Lightning uses; src/systems/resume.py resumes from
the newest of it and last.ckpt) and asks SLURM to requeue the job (``scontrol requeue``). Training
goes on until SLURM stops the job.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl

from src.systems.resume import HPC_CHECKPOINT
from src.systems.run_lock import slurm_job

def next_hpc_checkpoint(run_dir: Path) -> Path:
    """run_dir/hpc_ckpt_<n>.ckpt with n one above the highest present (1 for the first)."""
    present = [int(m.group(1)) for p in run_dir.glob("hpc_ckpt_*.ckpt") if (m := HPC_CHECKPOINT.match(p.name))]
    return run_dir / f"hpc_ckpt_{max(present, default=0) + 1}.ckpt"


class SlurmRequeue(pl.Callback):
    """Save at the end of the step during which SLURM's requeue signal came, then requeue the job."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.signum: Optional[int] = None   # the requeue signal, while this callback's handler is in place
        self.pending = False
        self.saved: list[Path] = []
        self._previous: Any = None

    def __getstate__(self) -> dict:  # spawned ranks install their own handler
        return {**self.__dict__, "_previous": None, "signum": None}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning_fabric.plugins.environments import SLURMEnvironment

        # where Lightning's own signal handling looks (a single-device strategy has no environment of its own)
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None) \
            or getattr(trainer.strategy, "cluster_environment", None)
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread() or self.signum is not None:
            return
        self.signum = int(env.requeue_signal or signal.SIGUSR1)
        self._previous = signal.signal(self.signum, self._handle)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.signum is not None and threading.current_thread() is threading.main_thread():
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self.signum = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.pending = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.signum is None:
            return
        pending = self.pending
        if trainer.world_size > 1:  # every rank asks at the same step; any rank's signal counts
            pending = bool(trainer.strategy.reduce_boolean_decision(pending, all=False))
        if not pending:
            return
        self.pending = False
        path = next_hpc_checkpoint(self.run_dir)
        path = Path(trainer.strategy.broadcast(str(path)))  # rank 0's name on every rank
        trainer.save_checkpoint(path, weights_only=False)
        self.saved.append(path)
        if trainer.is_global_zero:
            self._requeue(int(trainer.global_step), path)

    @staticmethod
    def _requeue(step: int, path: Path) -> None:
        job = slurm_job()
        if not job:
            print(f"SLURM requeue signal: saved step {step} to {path}; no SLURM job id to requeue",
                  file=sys.stderr, flush=True)
            return
        try:
            done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
            ok, why = done.returncode == 0, (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, why = False, [str(e)]
        what = f"requeued SLURM job {job}" if ok else f"could not requeue SLURM job {job} ({why[0]})"
        print(f"SLURM requeue signal: saved step {step} to {path}; {what}", file=sys.stderr, flush=True)
