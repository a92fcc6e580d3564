"""One training run as train.py starts it: the Trainer from the hardware/trainer/logger/callbacks
groups, the data module and model from the task's config (LPIPS weights fetched once when missing),
fit with resume from the run folder's last.ckpt, then test. Returns the final metrics.

A run holds its folder's lock while it runs (src/systems/run_lock.py), removes the temporary files
of checkpoint writes that a kill cut off, resumes exactly (src/systems/resume.py, src/data/resume.py)
and saves its current step when SIGTERM or SIGINT stops it (src/systems/signals.py)."""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from src.config.compose import ROOT
from src.config.schema import validate_config
from src.systems.trainer_args import check_trainer_args
from src.utils.config import plain
from src.utils.errors import UserError, first_line

def instantiate(node: Any) -> Any:
    """hydra.utils.instantiate on a plain copy; a UserError raised by a constructor (missing file,
    bad value) comes out as itself, not wrapped in Hydra's InstantiationException."""
    from hydra.errors import InstantiationException

    try:
        return hydra.utils.instantiate(plain(node))
    except InstantiationException as e:
        cause = e.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        raise


def instantiate_all(group: Optional[DictConfig]) -> list:
    return [instantiate(node) for node in (group or {}).values() if isinstance(node, DictConfig) and "_target_" in node]


def build_trainer(cfg: DictConfig, run_dir: Path, extra_callbacks: Sequence[Any] = ()):
    """Trainer from the trainer node + the hardware group, with loggers/callbacks instantiated
    (and ``extra_callbacks``: the run's own)."""
    import pytorch_lightning as pl
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from src.systems.checkpoint_io import AtomicCheckpointIO

    loggers_cfg = cfg.get("logger") or {}
    if "wandb" in loggers_cfg and loggers_cfg.wandb.get("id") is None:
        # a stable id from the run dir: a resumed or requeued run continues the same wandb run
        with open_dict(loggers_cfg):
            loggers_cfg.wandb.id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
    if "wandb" in loggers_cfg and os.environ.get("WANDB_MODE") == "offline":
        with open_dict(loggers_cfg):
            loggers_cfg.wandb.offline = True
    loggers = instantiate_all(loggers_cfg)
    callbacks = instantiate_all(cfg.get("callbacks")) + list(extra_callbacks)
    hw = cfg.hardware
    trainer_kwargs = check_trainer_args(plain(cfg.trainer))
    try:
        return pl.Trainer(
            accelerator=hw.accelerator, devices=plain(hw.devices), num_nodes=hw.num_nodes,
            strategy=hw.strategy, precision=hw.precision, deterministic=hw.deterministic,
            logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir),
            plugins=[AtomicCheckpointIO()], **trainer_kwargs,
        )
    except (MisconfigurationException, ValueError, TypeError) as e:
        given = {**{f"hardware.{k}": v for k, v in plain(hw).items()}, **{f"trainer.{k}": v for k, v in trainer_kwargs.items()}}
        named = [f"{k}={v!r}" for k, v in given.items() if f"`{k.split('.')[1]}`" in str(e) or f"{k.split('.')[1]}=" in str(e)]
        raise UserError(f"Lightning rejects {', '.join(named) or 'the hardware/trainer settings'}: {first_line(e)}") from None


def cpu_threads_per_process(hw: DictConfig) -> Optional[int]:
    """Intra-op CPU threads for this process, or None to keep torch's default.

    hardware.cpu_threads wins; then $OMP_NUM_THREADS (torch reads it itself); else, when several
    processes share this node (DDP on GPUs), cores // processes: ranks that each take every core
    oversubscribe the CPU and step up to 1.3x slower (docs/results/ddp_scaling.md).
    """
    if hw.get("cpu_threads"):
        return int(hw.cpu_threads)
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    devices = plain(hw.devices)
    if hw.accelerator not in ("gpu", "cuda") or "ddp" not in str(hw.strategy):
        return None
    if isinstance(devices, (list, tuple)):
        local = len(devices)
    elif str(devices) in ("auto", "-1"):
        import torch

        local = torch.cuda.device_count()
    else:
        local = int(devices)
    if local <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // local)


def _build(cfg: DictConfig):
    """(datamodule, model), seeded as the run's seed says. A missing LPIPS weights file is fetched
    once (one progress line) and the two are built again from the same seed."""
    import pytorch_lightning as pl

    from src.networks import lpips_weights, perceptual

    for attempt in (0, 1):
        pl.seed_everything(cfg.seed, workers=True)
        try:
            return instantiate(_resolved_data(cfg.data)), instantiate(cfg.model)
        except perceptual.WeightsMissing as missing:
            if attempt:
                raise
            lpips_weights.fetch_or_explain(missing)
    raise AssertionError("unreachable")


def _resolved_data(data: DictConfig) -> Any:
    """The data node with a named ``phrasings`` source (data.phrasings=vocabulary) replaced by its
    sentences per concept, which the data module takes."""
    source = data.get("phrasings") if "phrasings" in data else None
    if not isinstance(source, str):
        return data
    from src.embedded.phrasings import vocabulary_phrasings

    node = plain(data)
    node["phrasings"] = vocabulary_phrasings(source, list(node["prompts"]["concepts"]))
    return node


def _test_batches(cfg: DictConfig) -> Optional[int]:
    """How many batches the test stage runs (None: unknown here)."""
    tr = cfg.get("trainer") or {}
    if tr.get("fast_dev_run"):
        return int(tr.fast_dev_run) if not isinstance(tr.fast_dev_run, bool) else 1
    n = (cfg.get("data") or {}).get("test_batches")
    limit = tr.get("limit_test_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        n = limit if n is None else min(int(n), limit)
    return None if n is None else int(n)


HYDRA_ONLY = {".hydra", "train.log"}  # what Hydra writes into a run folder before the run starts


def discard_unstarted_run_dir(cfg: DictConfig) -> None:
    """After a run stopped before it started: remove its folder when it holds nothing but Hydra's own
    files (and the emptied folders above it, up to paths.log_dir), so bad input leaves nothing behind."""
    import shutil

    try:
        run_dir, log_dir = Path(cfg.paths.output_dir).resolve(), Path(cfg.paths.log_dir).resolve()
    except Exception:  # no Hydra run (train() called from code) or unresolvable paths: nothing to tidy
        return
    if not run_dir.is_dir() or log_dir not in run_dir.parents or {p.name for p in run_dir.iterdir()} - HYDRA_ONLY:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for folder in run_dir.parents:
        if folder == log_dir.parent or any(folder.iterdir()):
            break
        folder.rmdir()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from the run dir's last checkpoint when present), then test. Returns the final
    metrics. Raises RunStopped after SIGTERM/SIGINT (the step saved), UserError for bad input."""
    import torch

    import src.ops
    from src.systems.checkpoint_io import remove_checkpoint_temps
    from src.systems.run_lock import claim_run_dir

    validate_config(cfg)
    from src.systems.preflight import missing_inputs_message

    missing = missing_inputs_message(cfg)
    if missing:
        raise UserError(missing)
    threads = cpu_threads_per_process(cfg.hardware)
    if threads:
        torch.set_num_threads(threads)
    src.ops.configure(impl=cfg.hardware.ops_impl, on_build_failure=cfg.hardware.ops_on_build_failure)
    if cfg.hardware.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("hardware asks for a GPU but CUDA is not available: use hardware=cpu")
    run_dir, lock = claim_run_dir(cfg)
    try:
        if lock is not None:
            _remove_cut_off_writes(run_dir)
        return _fit_and_test(cfg, run_dir)
    except BaseException:
        if lock is not None:
            for folder in (run_dir / "checkpoints", run_dir):
                remove_checkpoint_temps(folder)
        raise
    finally:
        if lock is not None:
            lock.release()


def _remove_cut_off_writes(run_dir: Path) -> None:
    from src.systems.checkpoint_io import remove_checkpoint_temps
    from src.utils.log import warn

    removed = remove_checkpoint_temps(run_dir / "checkpoints") + remove_checkpoint_temps(run_dir)
    if removed:
        warn(f"removed {len(removed)} unfinished checkpoint write(s) of a killed run: {removed[0]}")


def _fit_and_test(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from src.systems.resume import StepSeeds, check_checkpoint_fits, resume_checkpoint
    from src.systems.quiet import QuietSpawnedRanks
    from src.systems.requeue import SlurmRequeue
    from src.systems.signals import SaveAndStop, StopSignals
    from src.utils.run_meta import save_run_metadata

    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_metadata(run_dir, OmegaConf.to_yaml(cfg, resolve=True), cfg.seed, ROOT)
    signals = StopSignals(forward_to_children="spawn" in str(cfg.hardware.get("strategy") or ""))
    stopper = SaveAndStop(signals, run_dir / "checkpoints" / "last.ckpt")
    # first: Lightning's checks of hardware/trainer cost no model loading
    trainer = build_trainer(cfg, run_dir, [StepSeeds(cfg.seed), stopper, QuietSpawnedRanks(),
                                           SlurmRequeue(run_dir)])
    datamodule, model = _build(cfg)

    ckpt = resume_checkpoint(run_dir) if cfg.resume else None
    if ckpt is not None:
        check_checkpoint_fits(ckpt, model, run_dir.name)
    if trainer.is_global_zero:
        print(f"run dir: {run_dir}" + (f" (resuming from {ckpt})" if ckpt else ""), file=sys.stderr)
    try:
        with signals:
            _fit(trainer, model, datamodule, ckpt, stopper, run_dir)
            metrics = _scalars(trainer)
            if cfg.test:
                n = _test_batches(cfg)
                if trainer.is_global_zero and n is not None:
                    print(f"testing the final weights on {n} batch{'es' if n != 1 else ''} "
                          "(data.test_batches or trainer.limit_test_batches sets how many; test=false skips it)",
                          file=sys.stderr)
                # the weights at the end of training (not "best"): the exported model is the final one
                _stage(trainer, stopper, run_dir, "testing", lambda: trainer.test(model, datamodule=datamodule))
                metrics.update(_scalars(trainer))
    except MisconfigurationException as e:  # Lightning's word for a setting it cannot run with
        raise UserError(f"Lightning: {first_line(e)}") from None
    return metrics


def _scalars(trainer: Any) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _fit(trainer: Any, model: Any, datamodule: Any, ckpt: Optional[Path], stopper: Any, run_dir: Path) -> None:
    """trainer.fit, with a checkpoint of another shape as one line and a stop signal as RunStopped."""
    from src.systems.resume import restore_error

    try:
        _stage(trainer, stopper, run_dir, "training",
               lambda: trainer.fit(model, datamodule=datamodule, ckpt_path=None if ckpt is None else str(ckpt)))
    except Exception as e:
        wrong = restore_error(e, ckpt, run_dir.name) if ckpt is not None else None
        if wrong is None:
            raise
        raise wrong from None
    if stopper.requested(trainer):  # the signal came after the last step: save it as a stop would
        if stopper.saved_step != int(trainer.global_step):  # (the end of training may have saved it)
            stopper.save(trainer)
        raise _stopped(stopper, trainer, run_dir, "training")


def _stage(trainer: Any, stopper: Any, run_dir: Path, stage: str, call) -> None:
    """Run ``call``; a stop signal during it (or an exit it caused) ends in RunStopped."""
    from src.systems.signals import is_stop

    try:
        call()
    except BaseException as e:
        if is_stop(e) or stopper.signals.signum is not None:
            raise _stopped(stopper, trainer, run_dir, stage) from None
        raise
    if stage == "testing" and stopper.signals.signum is not None:
        raise _stopped(stopper, trainer, run_dir, stage)


def _stopped(stopper: Any, trainer: Any, run_dir: Path, stage: str):
    """The RunStopped of a run that a signal stopped during ``stage``, saying how to go on."""
    import signal

    from src.systems.signals import RunStopped

    signals = stopper.signals
    signum = signals.signum or signal.SIGTERM
    name = signal.Signals(signum).name
    if stopper.saved_step is None and signals.forward_to_children:  # the spawned ranks saved it
        stopper.saved_step = stopper.step_saved_by_ranks()
    step = int(trainer.global_step if stopper.saved_step is None else stopper.saved_step)
    hint = f"resume with the same command and name={run_dir.name}" if not is_sweep() else "rerun the sweep to resume"
    if signals.forced:
        what = f"stopped at once by a second SIGINT at step {step}, unsaved since the last checkpoint"
    elif stopper.saved_step is not None:
        what = f"stopped by {name} at step {step}; saved {stopper.checkpoint}"
    elif stage == "testing":
        what = f"stopped by {name} while testing, after training to step {step}"
    else:
        what = f"stopped by {name} at step {step}, unsaved since the last checkpoint"
    return RunStopped(f"{what}: {hint}", signum, quiet=not trainer.is_global_zero)


def is_sweep() -> bool:
    """Whether this process runs one job of a Hydra sweep (-m)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra run (train() called from code)
        return False


def finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
