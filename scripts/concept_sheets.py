"""Write one contact sheet per concept of an animator: held-out faces x frames, every cell labelled.

    python scripts/concept_sheets.py --page docs/concepts.md          # every concept -> docs/images/concepts/
    python scripts/concept_sheets.py --concepts smiling closing_eyes --faces 2 --out /tmp/sheets
    python scripts/concept_sheets.py --checkpoint logs/animator/runs/my-exp/animator.safetensors --device cuda

A sheet is <out>/<concept>.webp (or .png with --format png; spaces become "_"): the prompt on top, then one row a face, under
its seed, and one column a frame, under its index. The faces are the generator's faces of seeds
--first-seed, --first-seed + 1, ...: the default 10000 is where evaluate.py takes its test faces
(training draws its faces from random 31-bit seeds). Each row is a --frames-frame video: the
animator runs its own number of steps (16 for the embedded default) and the motion is resampled to
--frames evenly spaced frames, the first (the input face) and the last kept, so 8 frames show the
whole motion that a 16-frame video plays. The sheets go through the one contact-sheet writer,
``src.utils.video.write_contact_sheet`` (atomic; a lossy WebP keeps a sheet of 4 x 8 faces near
60 KB, a palette PNG of --colors colours under 250 KB). --page also writes a Markdown page of every sheet, under its prompt.

Bad input (an unknown concept, an unwritable folder, a missing checkpoint) ends with one line
``error: ...`` and exit code 2, before any face is animated.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
import time
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.utils.errors import UserError, exit_code  # noqa: E402

DEFAULT_CHECKPOINT = ROOT / "assets" / "animator_synthetic.safetensors"
DEFAULT_OUT = ROOT / "docs" / "images" / "concepts"
FIRST_SEED = 10_000  # evaluate.py's face_seed_offset: the faces it scores


FORMATS = ("webp", "png")


def file_name(concept: str, fmt: str = "webp") -> str:
    """A concept's sheet: 'closing eyes' -> 'closing_eyes.webp'."""
    return "_".join(concept.split()) + "." + fmt


def pick_concepts(requested: Sequence[str] | None, known: Sequence[str]) -> list[str]:
    """The concepts asked for (all when None), each as the animator names it; a name may use '_'
    for its spaces ('closing_eyes'). An unknown name is a UserError that lists the known ones."""
    if not known:
        raise UserError("the animator has no prompt concepts (domain.prompts.concepts is empty)")
    if not requested:
        return list(known)
    by_key = {c.replace(" ", "_").lower(): c for c in known}
    picked, unknown = [], []
    for name in requested:
        concept = by_key.get(name.strip().replace(" ", "_").lower())
        if concept is None:
            unknown.append(name)
        elif concept not in picked:
            picked.append(concept)
    if unknown:
        raise UserError(f"unknown concept {', '.join(repr(u) for u in unknown)}; the animator knows: "
                        f"{', '.join('_'.join(c.split()) for c in known)}")
    return picked


def write_concept_sheet(videos: torch.Tensor, path: str | os.PathLike, prompt: str, seeds: Sequence[int],
                        colors: int | None = 256) -> Path:
    """videos [N,T,3,H,W] in [-1,1] (one row a face) as one sheet: ``prompt`` on top, 'face seed S'
    above each row, 't=i' above each column; a WebP or PNG by the path's suffix, a palette PNG of
    ``colors`` colours (None: RGB)."""
    from src.utils.video import write_contact_sheet

    if len(seeds) != videos.shape[0]:
        raise ValueError(f"{len(seeds)} seeds for {videos.shape[0]} videos")
    return write_contact_sheet(videos, path, row_labels=[f"face seed {s}" for s in seeds], title=prompt,
                               colors=colors)


def page_text(sheets: Sequence[tuple[str, Path]], page: Path, faces: int, frames: int, first_seed: int,
              checkpoint: str) -> str:
    """The Markdown page of the sheets [(prompt, png)], images linked relative to ``page``."""
    intro = (f"One contact sheet per concept of the animator `{checkpoint}`: {faces} faces held out from "
             f"training, one row each (the generator's faces of seeds {first_seed} to {first_seed + faces - 1}, "
             f"the first faces `evaluate.py` scores; training draws its faces from random seeds), and "
             f"{frames} frames of each video, one column each: the whole motion of a default video, sampled "
             f"evenly from the input face (t=0) to its last frame. Each prompt is one that `python animate.py "
             f"list_prompts=true` prints; the other settings are the file's own (strength 1, linear decay, its "
             f"identity projection). How far each concept moves, measured over 200 faces: "
             f"[results/motion_fidelity.md](results/motion_fidelity.md).")
    lines = ["# What each concept looks like", "", *textwrap.wrap(intro, 100), "",
             "Written by `python scripts/concept_sheets.py --page docs/concepts.md` (`--help` lists the options).", ""]
    for prompt, png in sheets:
        link = Path(os.path.relpath(png, page.parent)).as_posix()
        lines += [f"## {prompt}", "", f"![{prompt} {faces} faces, {frames} frames each]({link})", ""]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc = __doc__.split("\n\n")
    ap = argparse.ArgumentParser(description=doc[0], epilog="\n\n".join(doc[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT),
                    help="the animator file (default: the embedded default in assets/)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the sheets (default: docs/images/concepts)")
    ap.add_argument("--concepts", nargs="+", metavar="CONCEPT",
                    help="only these concepts ('closing_eyes' or 'closing eyes'; default: all of the animator's)")
    ap.add_argument("--faces", type=int, default=4, help="faces, one row each (default 4)")
    ap.add_argument("--frames", type=int, default=8, help="frames of each video, one column each (default 8)")
    ap.add_argument("--first-seed", type=int, default=FIRST_SEED,
                    help=f"seed of the first face; the next faces take the next seeds (default {FIRST_SEED})")
    ap.add_argument("--format", choices=FORMATS, default="webp",
                    help="webp (lossy, about 60 KB a sheet; default) or png")
    ap.add_argument("--colors", type=int, default=256,
                    help="with --format png: colours of the palette PNG, 2..256; 0 writes RGB (default 256)")
    ap.add_argument("--identity-projection", type=float, default=None,
                    help="0..1, see animate.py (default: the animator file's own)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | mps (default cpu)")
    ap.add_argument("--page", default=None, help="also write a Markdown page of the sheets here")
    return ap.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every check that needs no animation, so that bad input costs no minutes."""
    if args.faces < 1:
        raise UserError(f"--faces must be >= 1, got {args.faces}")
    if args.frames < 2:
        raise UserError(f"--frames must be >= 2 (the input face and the end of the motion), got {args.frames}")
    if args.first_seed < 0:
        raise UserError(f"--first-seed must be >= 0, got {args.first_seed}")
    if args.colors != 0 and not 2 <= args.colors <= 256:
        raise UserError(f"--colors must be 0 (RGB) or 2..256, got {args.colors}")
    if args.identity_projection is not None and not 0.0 <= args.identity_projection <= 1.0:
        raise UserError(f"--identity-projection must be in [0, 1], got {args.identity_projection}")


def run(args: argparse.Namespace) -> list[Path]:
    from src.config.cli import parse_device
    from src.pipeline import FaceAnimator
    from src.pipeline.animator_file import read_animator_file
    from src.utils.io import atomic_write_text, check_input_file, check_output_path

    check_args(args)
    device = parse_device(args.device)
    checkpoint = check_input_file(args.checkpoint, "--checkpoint")
    prompts_cfg = (read_animator_file(checkpoint).hyper_parameters.get("domain") or {}).get("prompts") or {}
    concepts = pick_concepts(args.concepts, list(prompts_cfg.get("concepts") or []))
    template = str(prompts_cfg.get("template") or "{}")
    out = Path(args.out).expanduser()
    targets = [check_output_path(out / file_name(c, args.format), "contact sheet", probe=False) for c in concepts]
    try:  # made now, so that the probe below writes where the sheets will go
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the folder {out}: {e.strerror or e}") from None
    check_output_path(targets[0], "contact sheet")
    page = check_output_path(args.page, "--page") if args.page else None

    start = time.perf_counter()
    animator = FaceAnimator.from_pretrained(checkpoint, device=device)
    seeds = list(range(args.first_seed, args.first_seed + args.faces))
    ws = animator.sample_latents(seeds=seeds)
    projection = (float(animator.inference_cfg.identity_projection or 0.0) if args.identity_projection is None
                  else args.identity_projection)
    jacobian = None
    if projection > 0:  # it depends on the faces alone: once for every concept
        print(f"identity projection {projection:g}: the reader's Jacobian at {len(seeds)} faces ...", flush=True)
        jacobian = animator.identity_jacobian(ws)
    print(f"loaded in {time.perf_counter() - start:.1f} s; {len(concepts)} concepts x {len(seeds)} faces x "
          f"{args.frames} frames -> {out}", flush=True)
    written = []
    for i, (concept, target) in enumerate(zip(concepts, targets), 1):
        t0 = time.perf_counter()
        prompt = template.format(concept)
        video = animator.animate(ws, [prompt], num_frames=args.frames, identity_projection=projection,
                                 identity_jacobian=jacobian)["frames"]
        colors = (args.colors or None) if args.format == "png" else None
        write_concept_sheet(video.cpu(), target, prompt, seeds, colors=colors)
        written.append(target)
        print(f"[{i}/{len(concepts)}] {concept}: {time.perf_counter() - t0:.1f} s -> {target} "
              f"({target.stat().st_size / 1024:.0f} KB)", flush=True)
    if page is not None:
        sheets = [(template.format(c), t) for c, t in zip(concepts, written)]
        atomic_write_text(page, page_text(sheets, page, len(seeds), args.frames, args.first_seed,
                                          _shown_path(checkpoint)))
        print(f"wrote {page}")
    print(f"{len(written)} sheets in {time.perf_counter() - start:.0f} s")
    return written


def _shown_path(path: Path) -> str:
    """The checkpoint as the page names it: relative to the repository when inside it."""
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return path.name


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
