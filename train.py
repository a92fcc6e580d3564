"""Train a model of the project: python train.py task=animator domain=synthetic loss=paper hardware=cpu

Tasks: stylegan (GAN training of the generator), clip (small LiT CLIP), oracle (attribute regressor),
face_id (face recogniser of the synthetic domain, for the identity loss), animator (the paper's method).
See README.md for sweeps, multi-GPU and SLURM. A short run end to end: python train.py debug=fast

SIGTERM or SIGINT (Ctrl-C) saves the current step to checkpoints/last.ckpt and exits 143 / 130 with
one ``error: ...`` line saying how to resume; a rerun with the same name= continues exactly there.

The command line's own problems (a misspelt key, an unknown option, a value of the wrong type, a
Trainer argument Lightning rejects, LPIPS weights that cannot be fetched) end in one ``error: ...``
line and exit code 2; HYDRA_FULL_ERROR=1 shows their tracebacks. Libraries' tips and warnings the
user cannot act on are silenced (LGFA_VERBOSE=1 shows them).
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig

from src.config.schema import register_configs, register_resolvers
from src.systems.run import discard_unstarted_run_dir, finish_wandb, is_sweep, train
from src.systems.signals import RunStopped
from src.utils.cpu_memory import reuse_freed_memory
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parent
# paths.root_dir defaults to the repository (assets/, logs/), wherever train.py is started from
os.environ.setdefault("LGFA_ROOT", str(ROOT))
register_configs()
register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> Optional[float]:
    reuse_freed_memory()  # CPU runs reuse freed activations (src/utils/cpu_memory.py)
    from src.systems.quiet import quiet_libraries

    quiet_libraries()
    failed = True
    try:
        metrics = train(cfg)
        failed = False
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        discard_unstarted_run_dir(cfg)
        sys.exit(2)
    except RunStopped as e:  # SIGTERM / SIGINT: the step is saved; 143 / 130 tell a scheduler it did not finish
        if not e.quiet:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    finally:
        finish_wandb(failed)
    key = cfg.get("optimized_metric")
    if key and key in metrics:
        return metrics[key]
    if key and is_sweep():  # only a sweeper reads the returned value
        warnings.warn(f"optimized_metric '{key}' was not logged; available: {sorted(metrics)}")
    return None


def cli() -> int:
    """``python train.py [overrides]``: Hydra's main, with the command line's errors as one line."""
    from src.config.hydra_errors import config_error_line, unknown_flags

    argv = list(sys.argv[1:])
    flags = unknown_flags(argv)
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
