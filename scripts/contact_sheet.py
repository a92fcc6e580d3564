"""Write a PNG grid of random synthetic faces (for looking at the renderer).

    python scripts/contact_sheet.py --out /tmp/faces.png --rows 8 --cols 8 --resolution 128 --seed 0
    python scripts/contact_sheet.py --out /tmp/concepts.png --concepts   # one row per concept
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.embedded import neutral_params, render, sample_params, vocabulary  # noqa: E402
from src.utils.errors import UserError  # noqa: E402
from src.utils.io import atomic_write  # noqa: E402


def grid_image(images: torch.Tensor, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """images [rows*cols, 3, R, R] in [-1, 1] -> uint8 [H, W, 3] grid with white padding."""
    n, _, r, _ = images.shape
    if n != rows * cols:
        raise UserError(f"need {rows * cols} images for a {rows}x{cols} grid, got {n}")
    img = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = np.full((rows * (r + pad) + pad, cols * (r + pad) + pad, 3), 255, np.uint8)
    for i in range(n):
        y, x = divmod(i, cols)
        out[pad + y * (r + pad): pad + y * (r + pad) + r, pad + x * (r + pad): pad + x * (r + pad) + r] = img[i]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concepts", action="store_true",
                    help="rows = concepts (first --rows of them), columns = faces with the preset at full strength")
    ap.add_argument("--neutral", action="store_true", help="neutral expressions only")
    args = ap.parse_args(argv)
    try:
        if args.rows < 1 or args.cols < 1:
            raise UserError("--rows and --cols must be >= 1")
        g = torch.Generator().manual_seed(args.seed)
        if args.concepts:
            concepts = vocabulary.CONCEPTS[: args.rows]
            base = neutral_params(sample_params(args.cols, g))
            params = torch.cat([vocabulary.apply_preset(base, c, 1.0) for c in concepts])
            for c in concepts:
                print(c.name)
        else:
            params = sample_params(args.rows * args.cols, g)
            if args.neutral:
                params = neutral_params(params)
        sheet = grid_image(render(params, args.resolution), args.rows, args.cols)
        with atomic_write(args.out) as tmp:
            Image.fromarray(sheet).save(tmp, format="PNG")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
