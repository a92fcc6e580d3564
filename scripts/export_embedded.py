"""Collect the trained embedded-default models into one assets folder with their canonical names.

    python scripts/export_embedded.py --animator-ckpt RUN/checkpoints/last.ckpt --generator G.safetensors \
        --clip CLIP.safetensors --oracle ORACLE.safetensors [--face-id FACE_ID.safetensors | \
        --identity-reader READER.safetensors] [--identity-projection 0.5] [--started-from TEXT] --out assets

Files are copied byte for byte (with their .json sidecars and the CLIP text cache), so the hashes the
animator checkpoint recorded still match; the animator is exported as safetensors whose config names
the other files relative to the assets folder (relocatable). --identity-projection records the inference
projection the animator is meant to run with (on the identity reader), so animate.py and the evaluation
use it by default; --started-from replaces the training machine's model.train.init_checkpoint path in the
record with a portable description of the start (e.g. "git show REV:assets/animator_synthetic.safetensors").
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAMES = {"generator": "stylegan2_synthetic128", "clip": "clip_synthetic", "oracle": "oracle_synthetic",
         "face_id": "face_id_synthetic", "identity_reader": "identity_reader_synthetic"}


def copy_with_sidecars(src: Path, out_dir: Path, stem: str) -> Path:
    """Copy X.safetensors plus X.json and X.text_cache.safetensors when present. Returns the new path."""
    from src.utils.errors import UserError

    if not src.is_file():
        raise UserError(f"{src}: not found")
    for suffix in (".safetensors", ".json", ".text_cache.safetensors"):
        part = src.parent / (src.stem + suffix)
        if part.is_file():
            dst = out_dir / (stem + suffix)
            if part.resolve() != dst.resolve():
                shutil.copyfile(part, dst)
    return out_dir / f"{stem}.safetensors"


def run(args: argparse.Namespace) -> None:
    from src.pipeline import FaceAnimator
    from src.utils.errors import UserError

    if args.face_id and args.identity_reader:
        raise UserError("an animator has one identity-loss network: pass --face-id or --identity-reader")
    if args.identity_projection is not None:
        if not 0 <= args.identity_projection <= 1:
            raise UserError("--identity-projection must be in [0, 1]")
        if args.identity_projection > 0 and not args.identity_reader:
            raise UserError("--identity-projection needs --identity-reader (the projection's reader)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: copy_with_sidecars(Path(getattr(args, key)), out, stem) for key, stem in NAMES.items()
             if getattr(args, key) is not None}
    overrides = {"domain.generator.checkpoint": str(paths["generator"]), "domain.clip.checkpoint": str(paths["clip"]),
                 "domain.loss_clip.checkpoint": str(paths["clip"]), "validation.identity_metric_path": str(paths["oracle"])}
    for key in ("face_id", "identity_reader"):
        if key in paths:
            overrides["domain.identity_loss.checkpoint"] = str(paths[key])
    if args.identity_projection is not None:
        overrides["inference.identity_projection"] = args.identity_projection
        overrides["inference.projection_reader"] = str(paths["identity_reader"]) if args.identity_projection > 0 else None
    if args.started_from is not None:
        overrides["train.init_checkpoint"] = args.started_from
    module = FaceAnimator.from_pretrained(args.animator_ckpt, overrides=overrides)
    dst = module.save_pretrained(out / "animator_synthetic.safetensors", relative_to=out)
    for f in sorted(out.iterdir()):
        print(f"{f.stat().st_size / 1e6:8.2f} MB  {f}")
    print(f"exported {dst}")


def main(argv=None) -> int:
    from src.utils.errors import exit_code

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animator-ckpt", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--oracle", required=True)
    ap.add_argument("--face-id", default=None, help="the face recogniser of the identity loss (when the animator used one)")
    ap.add_argument("--identity-reader", default=None,
                    help="the identity-attribute reader of the identity loss (domain.identity_loss.kind=attributes)")
    ap.add_argument("--identity-projection", type=float, default=None,
                    help="0..1: the default inference projection of the export (needs --identity-reader, its reader)")
    ap.add_argument("--started-from", default=None,
                    help="recorded as model.train.init_checkpoint: where a fine-tuned animator started, portably")
    ap.add_argument("--out", default=str(ROOT / "assets"))
    args = ap.parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
