"""Keep a training run's log to our messages, the progress bar and real problems: library tips
("💡 Tip: ..."), "GPU available" banners and warnings about deliberate choices are silenced
(LGFA_VERBOSE=1 keeps everything)."""
from __future__ import annotations

import logging
import os
import warnings

import pytorch_lightning as pl

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
    # spawned DDP ranks stopped by a signal: torch's "Terminating process N via signal SIGTERM" as they exit
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    root = logging.getLogger()
    if not any(isinstance(f, _NoLibraryInfoOnRoot) for f in root.filters):
        root.addFilter(_NoLibraryInfoOnRoot())
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    warnings.formatwarning = _one_line_warning  # after Lightning's import, which installs its own


class QuietSpawnedRanks(pl.Callback):
    """Ranks that a spawning strategy started (``ddp_spawn``) begin without this process's logging and
    warning setup: it is applied there as the rank unpickles its trainer, before Lightning's banners."""

    def __getstate__(self) -> dict:
        return {**self.__dict__, "pickled_in": os.getpid()}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if state.get("pickled_in") != os.getpid():  # unpickled in another process: a spawned rank
            quiet_libraries()
