"""Write a PNG grid of random synthetic faces (for looking at the renderer).

    python scripts/contact_sheet.py --out faces.png --rows 8 --cols 8 --resolution 128 --seed 0
    python scripts/contact_sheet.py --out concepts.png --concepts   # one row per concept, labelled

The grid is drawn by ``src.utils.video.write_contact_sheet`` (rows of frames, labels in the margins).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.embedded import neutral_params, render, sample_params, vocabulary  # noqa: E402
from src.utils.errors import UserError, exit_code  # noqa: E402
from src.utils.video import write_contact_sheet  # noqa: E402


def run(args: argparse.Namespace) -> None:
    if args.rows < 1 or args.cols < 1:
        raise UserError("--rows and --cols must be >= 1")
    g = torch.Generator().manual_seed(args.seed)
    row_labels, column_labels = None, []
    if args.concepts:
        concepts = vocabulary.CONCEPTS[: args.rows]
        base = neutral_params(sample_params(args.cols, g))
        params = torch.cat([vocabulary.apply_preset(base, c, 1.0) for c in concepts])
        row_labels, column_labels = [c.name for c in concepts], [f"face {i}" for i in range(args.cols)]
        for c in concepts:
            print(c.name)
    else:
        params = sample_params(args.rows * args.cols, g)
        if args.neutral:
            params = neutral_params(params)
    images = render(params, args.resolution)
    # a row of the sheet is a "video" of --cols faces: one home for labelled grids of frames
    write_contact_sheet(images.reshape(len(images) // args.cols, args.cols, *images.shape[1:]), args.out,
                        row_labels=row_labels, column_labels=column_labels)
    print(args.out)


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
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
