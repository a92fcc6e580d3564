"""Command line of bench/bench_ddp_animator.py: the arguments and the dispatch between the modes
(benchmark, --check-equivalence, --compare, --summarize)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from bench.ddp_animator.distributed import setup
from bench.ddp_animator.equivalence import check_equivalence, compare
from bench.ddp_animator.measure import benchmark
from bench.ddp_animator.report import print_table, summarize
from src.utils.errors import UserError

DESCRIPTION = "Multi-GPU (DDP) scaling benchmark and equivalence check of ONE animator training step."


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=DESCRIPTION,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=None, help="generator resolution (default 1024; --tiny: 64)")
    ap.add_argument("--batch", type=int, default=4, help="videos per GPU (paper: 4)")
    ap.add_argument("--frames", type=int, default=4, help="train_frames (paper: 4)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (also the number of no_sync steps)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps before timing")
    ap.add_argument("--fp32", action="store_true", help="no fp16 layers in the generator (default: top 4 in fp16)")
    ap.add_argument("--no-lpips", action="store_true", help="LPIPS loss weight 0 (no LPIPS network)")
    ap.add_argument("--checkpoint-res", type=int, default=0,
                    help="model.train.generator_checkpoint_res: generator blocks at >= this resolution "
                         "recomputed in the backward (0: off)")
    ap.add_argument("--nchw", action="store_true",
                    help="model.train.generator_channels_last=false: NCHW activations in the generator's fp16 "
                         "blocks (default: channels-last, as training runs them)")
    ap.add_argument("--lpips-dir", default=None, help="LPIPS weights folder (default $LGFA_LPIPS_DIR)")
    ap.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture of the loss CLIP (random init)")
    ap.add_argument("--input-clip-model", default="same",
                    help="CLIP of the animator's inputs: 'same' (one shared instance) or an open_clip name (human "
                         "domain: RN50)")
    ap.add_argument("--text-lr", type=float, default=0.0,
                    help="fine-tune the input CLIP's text tower at this lr (experiment human_paper: 1e-5); 0: frozen")
    ap.add_argument("--hidden", type=int, default=None, help="animator hidden size (default 384; --tiny: 32)")
    ap.add_argument("--tiny", action="store_true", help="64 px generator (channel_max 32) + tiny CLIP, for CPU tests")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--ops-impl", choices=("cuda", "ref", "auto"), default="cuda",
                    help="StyleGAN2 custom ops on GPU (CPU always uses ref)")
    ap.add_argument("--force-ddp", action="store_true", help="wrap in DDP also with a single process")
    ap.add_argument("--broadcast-buffers", type=int, choices=(0, 1), default=1,
                    help="DDP broadcast_buffers (1 = torch/Lightning default)")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP bucket size (25 = default)")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--no-candidates", action="store_true", help="do not pass batch['candidates']")
    ap.add_argument("--seed", type=int, default=0, help="model init seed (the same on every rank)")
    ap.add_argument("--data-seed", type=int, default=1234, help="seed of the global batches")
    ap.add_argument("--allreduce-reps", type=int, default=20)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="after the timed steps, N more under torch.profiler: GPU busy share, launches, top kernels")
    ap.add_argument("--json", default=None, help="rank 0 writes the results here")
    ap.add_argument("--baseline-json", default=None, help="JSON of the K=1 run: scaling efficiency")
    ap.add_argument("--check-equivalence", type=int, default=0, metavar="N",
                    help="run N deterministic Adam steps and save the weights (--save-weights) instead of timing")
    ap.add_argument("--save-weights", default=None, help="safetensors file of --check-equivalence (rank 0)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                    help="compare two --save-weights files (no torchrun)")
    ap.add_argument("--grad-tol", type=float, default=1e-3, help="--compare: max ||gA-gB||/||gA|| of step 1")
    ap.add_argument("--loss-tol", type=float, default=1e-3, help="--compare: max relative loss difference")
    ap.add_argument("--weight-tol", type=float, default=1e-2,
                    help="--compare: ||A-B||/||A-init|| above this is noted (diagnostic, not part of the verdict)")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", default=None, help="one table of several result JSONs")
    args = ap.parse_args(argv)
    if args.res is None:
        args.res = 64 if args.tiny else 1024
    if args.hidden is None:
        args.hidden = 32 if args.tiny else 384
    for name in ("batch", "frames"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if args.frames < 2:
        raise UserError("--frames must be >= 2")
    if args.steps < 1 or args.warmup < 0 or args.profile < 0:
        raise UserError("--steps must be >= 1, --warmup and --profile >= 0")
    if args.check_equivalence < 0:
        raise UserError("--check-equivalence N needs N >= 1")
    if args.check_equivalence and not args.save_weights:
        raise UserError("--check-equivalence needs --save-weights PATH")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    d = None
    try:
        args = parse_args(argv)
        if args.compare:
            return compare(*args.compare, args)
        if args.summarize:
            return summarize(args.summarize)
        if args.check_equivalence:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        d, _ = setup(args)
        if args.check_equivalence:
            check_equivalence(args, d)
            return 0
        res = benchmark(args, d)
        if d.rank == 0:
            print_table(res)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=2)
                print(f"wrote {args.json}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - some failures deserve a clear line too
        from src.ops import OpsBuildError

        if isinstance(e, OpsBuildError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        if d is not None:
            d.close()
