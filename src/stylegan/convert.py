"""Convert a StyleGAN2 generator to our safetensors format.

    python -m src.stylegan.convert IN OUT.safetensors [--fp16]

IN: NVIDIA network pickle (.pkl), rosinality checkpoint (.pt) or our .safetensors (+ .json).
Writes OUT.safetensors and OUT.json atomically. Errors: one line on stderr, exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from src.utils.errors import UserError, exit_code


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.stylegan.convert", description=__doc__.splitlines()[0])
    parser.add_argument("input", help="generator file: .pkl (NVIDIA), .pt (rosinality) or .safetensors (ours)")
    parser.add_argument("output", help="output path ending in .safetensors (a .json sidecar is written next to it)")
    parser.add_argument("--fp16", action="store_true", help="store float parameters as fp16 (buffers stay fp32)")
    args = parser.parse_args(argv)

    def command() -> None:
        from src.stylegan import load_generator, save_generator

        out = Path(args.output)
        if out.suffix != ".safetensors":
            raise UserError(f"{out}: output must end in .safetensors")
        G = load_generator(args.input, device="cpu")
        st_path = save_generator(G, out, fp16=args.fp16)
        n_params = sum(p.numel() for p in G.parameters())
        print(f"wrote {st_path} (+ {st_path.with_suffix('.json').name}): {G.img_resolution}px, z_dim {G.z_dim}, "
              f"w_dim {G.w_dim}, num_ws {G.num_ws}, c_dim {G.c_dim}, {n_params / 1e6:.2f}M parameters"
              f"{', fp16' if args.fp16 else ''}")

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
