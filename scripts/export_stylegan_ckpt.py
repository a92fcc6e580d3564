"""Export G_ema of a StyleGAN training checkpoint (Lightning .ckpt) as safetensors + json.

    python scripts/export_stylegan_ckpt.py RUN/checkpoints/last.ckpt OUT/stylegan2_synthetic128

For runs stopped before their end-of-training export (killed, or out of time), also checkpoints
written before the config groups (flat hyper-parameters). The checkpoint is read with
weights_only=True: nothing in it is executed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.errors import UserError, exit_code  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    from src.config.gan import regroup_flat_hparams
    from src.embedded.training.gan import StyleGANModule
    from src.systems.checkpoint_io import AtomicCheckpointIO

    def command() -> None:
        ckpt = AtomicCheckpointIO().load_checkpoint(argv[0])
        if not isinstance(ckpt, dict) or "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
            raise UserError(f"{argv[0]}: not a Lightning checkpoint (no hyper_parameters/state_dict)")
        hp = regroup_flat_hparams(dict(ckpt["hyper_parameters"]))  # older checkpoints: flat hparams
        hp["output"] = {**(hp.get("output") or {}), "export_path": None}
        module = StyleGANModule(**hp)
        module.load_state_dict(ckpt["state_dict"], strict=False)
        out = module.export_generator(argv[1])
        print(f"exported G_ema of step {ckpt.get('global_step')} to {out}")

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
