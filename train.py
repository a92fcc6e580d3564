"""Train a model of the project: python train.py task=animator domain=synthetic loss=paper hardware=cpu

Tasks: stylegan (GAN training of the generator), clip (small LiT CLIP), oracle (attribute regressor),
face_id (face recogniser of the synthetic domain, for the identity loss), animator (the paper's method).
See README.md for sweeps, multi-GPU and SLURM. A short run end to end: python train.py debug=fast

The command line's own problems (a misspelt key, an unknown option, a value of the wrong type, a
Trainer argument Lightning rejects, LPIPS weights that cannot be fetched) end in one ``error: ...``
line and exit code 2; HYDRA_FULL_ERROR=1 shows their tracebacks. Libraries' tips and warnings the
user cannot act on are silenced (LGFA_VERBOSE=1 shows them).
"""
from __future__ import annotations

import difflib
import hashlib
import logging
import os
import sys
import typing
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

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
    loggers = _instantiate_all(loggers_cfg)
    callbacks = _instantiate_all(cfg.get("callbacks"))
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
        raise UserError(f"Lightning rejects {', '.join(named) or 'the hardware/trainer settings'}: {_first_line(e)}") from None


# Trainer arguments train.py sets itself, and where the user sets them instead
_TRAINER_OWN = {"accelerator": "hardware.accelerator", "devices": "hardware.devices", "num_nodes": "hardware.num_nodes",
                "strategy": "hardware.strategy", "precision": "hardware.precision",
                "deterministic": "hardware.deterministic", "logger": "logger=<csv|wandb|none>",
                "callbacks": "callbacks=<default|none> or callbacks.<name>.*", "default_root_dir": "name= or paths.log_dir",
                "plugins": "nothing (train.py sets it)"}


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        return " | ".join(dict.fromkeys(_type_name(a) for a in args))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _accepts(value: Any, tp: Any) -> bool:
    """Whether a config value (plain python) fits the Trainer argument's annotation."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_accepts(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_accepts(v, args[0]) for v in value) if args else isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(tp, type) and isinstance(value, tp)


def check_trainer_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer:`` node as pl.Trainer keyword arguments; a key Lightning does not know, one train.py
    sets from another group, or a value of the wrong type raises UserError naming it and what fits."""
    import pytorch_lightning as pl

    try:
        hints = typing.get_type_hints(pl.Trainer.__init__)
    except Exception:  # annotations Lightning's version cannot evaluate here: leave the checks to it
        return kwargs
    hints.pop("return", None)
    for key, value in kwargs.items():
        if key in _TRAINER_OWN:
            raise UserError(f"trainer.{key} is set by train.py: use {_TRAINER_OWN[key]}")
        if key not in hints:
            near = difflib.get_close_matches(key, list(hints), n=3)
            raise UserError(f"trainer.{key} is not a pytorch_lightning.Trainer argument"
                            + (f" (did you mean {' or '.join('trainer.' + n for n in near)}?)" if near else
                               f"; accepted: {', '.join(k for k in hints if k not in _TRAINER_OWN)}"))
        if not _accepts(value, hints[key]):
            raise UserError(f"trainer.{key}={value!r}: expected {_type_name(hints[key])}")
    return kwargs


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

    from src.networks import perceptual

    for attempt in (0, 1):
        pl.seed_everything(cfg.seed, workers=True)
        try:
            return _instantiate(cfg.data), _instantiate(cfg.model)
        except perceptual.WeightsMissing as missing:
            if attempt:
                raise
            perceptual.fetch_or_explain(missing)
    raise AssertionError("unreachable")


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


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (resuming from the run dir's last.ckpt when present), then test. Returns the final metrics."""
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    import src.ops
    from src.utils.run_meta import save_run_metadata

    validate_config(cfg)
    threads = cpu_threads_per_process(cfg.hardware)
    if threads:
        torch.set_num_threads(threads)
    src.ops.configure(impl=cfg.hardware.ops_impl, on_build_failure=cfg.hardware.ops_on_build_failure)
    if cfg.hardware.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError("hardware asks for a GPU but CUDA is not available: use hardware=cpu")
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_metadata(run_dir, OmegaConf.to_yaml(cfg, resolve=True), cfg.seed, ROOT)

    trainer = build_trainer(cfg, run_dir)  # first: Lightning's checks of hardware/trainer cost no model loading
    datamodule, model = _build(cfg)

    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if cfg.resume and last.exists() else None
    if trainer.is_global_zero:
        print(f"run dir: {run_dir}" + (f" (resuming from {ckpt_path})" if ckpt_path else ""), file=sys.stderr)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        if cfg.test:
            n = _test_batches(cfg)
            if trainer.is_global_zero and n is not None:
                print(f"testing the final weights on {n} batch{'es' if n != 1 else ''} "
                      "(data.test_batches or trainer.limit_test_batches sets how many; test=false skips it)",
                      file=sys.stderr)
            # the weights at the end of training (not "best"): the exported model is the final one
            trainer.test(model, datamodule=datamodule)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()
                            if getattr(v, "numel", lambda: 1)() == 1})
    except MisconfigurationException as e:  # Lightning's word for a setting it cannot run with
        raise UserError(f"Lightning: {_first_line(e)}") from None
    return metrics


def _finish_wandb(failed: bool) -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


# Warnings of the libraries that a user of train.py cannot act on (regexes matched from the message's start)
NOISE_WARNINGS = (
    r"The '\w+' does not have many workers",                 # num_workers is hardware.num_workers; 0 is right on CPU
    r"Found \d+ module\(s\) in eval mode",                   # the frozen generator/CLIP/LPIPS stay in eval on purpose
    r"You have overridden `transfer_batch_to_device`",        # on purpose (src/systems/animator.py)
    r"Experiment logs directory .* exists and is not empty",  # a resumed run appends to its own logs
    r"Checkpoint directory .* exists and is not empty",       # a resumed run keeps its checkpoints
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",      # inside Lightning
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r"You are using a CUDA device .* that has Tensor Cores",  # fp32 matmul precision is the recipe's choice
    r"The `srun` command is available on your system but is not used",
)
NOISE_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric", "lightning")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


class _NoLibraryInfoOnRoot(logging.Filter):
    """Drops INFO records that a library logs on the root logger (open_clip's 'Parsing model identifier',
    'Loading full pretrained weights'... through logging.info); warnings and errors pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not ("site-packages" in record.pathname
                                                         or "dist-packages" in record.pathname)


def quiet_libraries() -> None:
    """Keep the progress bar, our messages and real problems; silence library tips ("💡 Tip: ..."),
    "GPU available" banners and warnings about deliberate choices. LGFA_VERBOSE=1 keeps everything."""
    from src.utils.log import show_warnings

    show_warnings()  # our warnings (the lgfa logger) as one line 'warning: ...'
    if os.environ.get("LGFA_VERBOSE", "") not in ("", "0"):
        return
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
                       ("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    import lightning_fabric  # noqa: F401  (their imports set their loggers to INFO: import first, then lower)
    import pytorch_lightning  # noqa: F401

    for name in NOISE_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    root = logging.getLogger()
    if not any(isinstance(f, _NoLibraryInfoOnRoot) for f in root.filters):
        root.addFilter(_NoLibraryInfoOnRoot())
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.formatwarning = _one_line_warning  # after Lightning's import, which installs its own


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    reuse_freed_memory()  # CPU runs reuse freed activations (src/utils/cpu_memory.py)
    quiet_libraries()
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
    if key and _is_multirun():  # only a sweeper reads the returned value
        warnings.warn(f"optimized_metric '{key}' was not logged; available: {sorted(metrics)}")
    return None


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra run (train() called from code)
        return False


# ------------------------------------------------------------------------- command-line errors
def _override_of(key: str, argv: Sequence[str]) -> Optional[str]:
    """The command-line argument that sets ``key`` (``key=...``, ``+key=...``, ``~key``), if any."""
    for arg in argv:
        name = arg.split("=", 1)[0].lstrip("+~")
        if name == key:
            return arg
    return None


def config_error_line(e: BaseException, argv: Sequence[str]) -> Optional[str]:
    """One line for an error of the command line's config (Hydra/OmegaConf), naming the argument and
    what would be accepted; None for any other exception (a bug: its traceback is kept)."""
    from hydra.errors import ConfigCompositionException, HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(e, OverrideParseException):
        return (f"cannot read the argument '{e.override}': {_first_line(Exception(e.message))} "
                "(the syntax is key=value; see https://hydra.cc/docs/advanced/override_grammar/basic/)")
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in str(e.missing_cfg_file):
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        if e.options:
            return f"{group}={option}: no such {group} option; choose one of {', '.join(e.options)}"
        return f"{group}={option}: no such option (there is no conf/{group}/ folder)"
    cause = e.__cause__ if isinstance(e, ConfigCompositionException) else e
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        full_key = str(cause.full_key)
        arg = _override_of(full_key, argv) or full_key
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
            parent, _, name = full_key.rpartition(".")
            node = getattr(cause, "parent_node", None)
            keys = [str(k) for k in node.keys() if str(k) != "hydra"] if node is not None and hasattr(node, "keys") else []
            near = difflib.get_close_matches(name, keys, n=3)
            where = parent or "the config"
            line = f"{arg}: {where} has no key '{name}'"
            if near:
                line += f" (did you mean {' or '.join(near)}?)"
            elif keys:
                line += f"; its keys: {', '.join(keys)}"
            if parent == "trainer":
                line += f"; another pytorch_lightning.Trainer argument is added with +{arg.lstrip('+')}"
            return line
        # ValidationError (a value of the wrong type or not in an enum), interpolation errors...
        return f"{arg}: {_first_line(Exception(getattr(cause, 'msg', None) or str(cause)))}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        skip = ("full_key:", "object_type", "reference_type", "Config search path", "provider=",
                "Set the environment", "To append to your config")
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith(skip)]
        if isinstance(e.__cause__, OmegaConfBaseException):
            lines.append(_first_line(e.__cause__))
        return " ".join(lines) or type(e).__name__
    if isinstance(e, ValueError) and _raised_in_hydra(e):  # Hydra's checks of its flags (--cfg with -m, ...)
        return _first_line(e)
    return None


def _raised_in_hydra(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}hydra{os.sep}" in tb.tb_frame.f_code.co_filename


def _unknown_flags(argv: Sequence[str]) -> list[str]:
    """Arguments starting with '-' that Hydra's own parser does not know (it would print its usage)."""
    try:
        from hydra._internal.utils import get_args_parser
    except ImportError:
        return []
    try:
        _, unknown = get_args_parser().parse_known_args(list(argv))
    except SystemExit:  # a known flag with a bad value: Hydra's parser says so itself below
        return []
    return [a for a in unknown if a.startswith("-")]


def cli() -> int:
    """``python train.py [overrides]``: Hydra's main, with the command line's errors as one line."""
    argv = list(sys.argv[1:])
    flags = _unknown_flags(argv)
    if flags:
        print(f"error: unknown option {' '.join(flags)}: train.py takes key=value overrides and Hydra's flags "
              "(--help, --cfg job, -m, ...)", file=sys.stderr)
        return 2
    user_wants_tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    # Hydra then raises config errors instead of printing them over several lines with exit code 1
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as e:
        line = None if user_wants_tracebacks else config_error_line(e, argv)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    finally:
        if not user_wants_tracebacks:
            os.environ.pop("HYDRA_FULL_ERROR", None)
    return 0


if __name__ == "__main__":
    sys.exit(cli())
