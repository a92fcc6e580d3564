"""CPU latency of the embedded default: 16 frames at 128 px (target: <= 5 s on 2 cores).

    python bench/bench_animate_cpu.py [--frames 16] [--reps 3] [--threads N] \
        [--identity-projection 1 --projection-reader assets/identity_reader_synthetic.safetensors] [--default-malloc]

Prints the one-off costs (imports, loading the animator with its generator and CLIP) apart from
the per-animation cost (text + image encoding, the recurrent motion, one batched generator call).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=str(ROOT / "assets" / "animator_synthetic.safetensors"))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--identity-projection", type=float, default=None, help="0..1 (default: the checkpoint's)")
    ap.add_argument("--projection-reader", default=None, help="identity-attribute reader of the projection")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's allocator thresholds alone (animate.py raises them: src/utils/cpu_memory.py)")
    args = ap.parse_args()
    from src.utils.cpu_memory import reuse_freed_memory

    tuned = False if args.default_malloc else reuse_freed_memory()
    print(f"allocator: {'freed memory reused (mallopt)' if tuned else 'glibc defaults'}")
    t0 = time.perf_counter()
    import torch

    from src.pipeline import FaceAnimator

    if args.threads:
        torch.set_num_threads(args.threads)
    t1 = time.perf_counter()
    module = FaceAnimator.from_pretrained(args.checkpoint, overrides={"inference.projection_reader": args.projection_reader}
                           if args.projection_reader else None)
    kw = {"identity_projection": args.identity_projection}
    t2 = time.perf_counter()
    w = module.sample_latents(1, seed=0)
    with torch.no_grad():
        module.animate(w, ["The person is smiling."], num_frames=args.frames, **kw)  # warm-up (text model, caches)
    t3 = time.perf_counter()
    times = []
    prompts = ["The person is winking.", "The person is opening mouth.", "The person is angry."]
    with torch.no_grad():
        for i in range(args.reps):
            s = time.perf_counter()
            module.animate(w, [prompts[i % len(prompts)]], num_frames=args.frames, **kw)
            times.append(time.perf_counter() - s)
    res = module.generator.img_resolution
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {res} px, {args.frames} frames, "
          f"identity projection {args.identity_projection if args.identity_projection is not None else 'as stored'}")
    print("| stage | seconds |\n|---|---|")
    print(f"| imports | {t1 - t0:.2f} |\n| load animator + G + CLIP | {t2 - t1:.2f} |\n| first animation (warm-up) | {t3 - t2:.2f} |")
    print(f"| animation, median of {args.reps} | {sorted(times)[len(times) // 2]:.2f} |")


if __name__ == "__main__":
    main()
