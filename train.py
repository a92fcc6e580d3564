"""Train a model of the project: python train.py task=animator domain=synthetic loss=paper hardware=cpu

Tasks: stylegan (GAN training of the generator), clip (small LiT CLIP), oracle (attribute regressor),
face_id (face recogniser of the synthetic domain, for the identity loss), animator (the paper's method).
See README.md for sweeps, multi-GPU and SLURM.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from src.config.schema import register_configs, register_resolvers, validate_config
from src.utils.config import plain
from src.utils.cpu_memory import reuse_freed_memory
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parent
# paths.root_dir defaults to the repository (assets/, logs/), wherever train.py is started from
os.environ.setdefault("LGFA_ROOT", str(ROOT))
register_configs()
register_resolvers()


def _instantiate(node: Any) -> Any:
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


def _instantiate_all(group: Optional[DictConfig]) -> list:
    return [_instantiate(node) for node in (group or {}).values() if isinstance(node, DictConfig) and "_target_" in node]


def build_trainer(cfg: DictConfig, run_dir: Path):
    """Trainer from the trainer node + the hardware group, with loggers/callbacks instantiated."""
    import pytorch_lightning as pl

    from src.systems.checkpoint_io import AtomicCheckpointIO

    loggers_cfg = cfg.get("logger") or {}
    if "wandb" in loggers_cfg and loggers_cfg.wandb.get("id") is None:
        # a stable id from the run dir: a resumed or requeued run continues the same wandb run
        with open_dict(loggers_cfg):
            loggers_cfg.wandb.id = hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
    if "wandb" in loggers_cfg and os.environ.get("WANDB_MODE") == "offline":
        with open_dict(loggers_cfg):
            loggers_cfg.wandb.offline = True
    loggers = _instantiate_all(loggers_cfg)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    hw = cfg.hardware
    trainer_kwargs = plain(cfg.trainer)
    return pl.Trainer(
        accelerator=hw.accelerator, devices=plain(hw.devices), num_nodes=hw.num_nodes,
        strategy=hw.strategy, precision=hw.precision, deterministic=hw.deterministic,
        logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir),
        plugins=[AtomicCheckpointIO()], **trainer_kwargs,
    )


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


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from the run dir's last.ckpt when present), then test. Returns the final metrics."""
    import pytorch_lightning as pl
    import torch

    import src.ops
    from src.utils.run_meta import save_run_metadata

    validate_config(cfg)
    threads = cpu_threads_per_process(cfg.hardware)
    if threads:
        torch.set_num_threads(threads)
    src.ops.configure(impl=cfg.hardware.ops_impl, on_build_failure=cfg.hardware.ops_on_build_failure)
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.hardware.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("hardware asks for a GPU but CUDA is not available: use hardware=cpu")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_metadata(run_dir, OmegaConf.to_yaml(cfg, resolve=True), cfg.seed, ROOT)

    datamodule = _instantiate(cfg.data)
    model = _instantiate(cfg.model)
    trainer = build_trainer(cfg, run_dir)

    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if ckpt_path:
        print(f"resuming from {ckpt_path}", file=sys.stderr)
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    if cfg.test:
        # the weights at the end of training (not "best"): the exported model is the final one
        trainer.test(model, datamodule=datamodule)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1})
    return metrics


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    reuse_freed_memory()  # CPU runs reuse freed activations (src/utils/cpu_memory.py)
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        _finish_wandb(failed)
    key = cfg.get("optimized_metric")
    if key and key in metrics:
        return metrics[key]
    if key:
        warnings.warn(f"optimized_metric '{key}' was not logged; available: {sorted(metrics)}")
    return None


if __name__ == "__main__":
    main()
