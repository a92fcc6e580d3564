"""CPU cost of the embedded default: 16 frames at 128 px (targets: `python animate.py` in <= 5 s on
2 idle cores, peak memory <= 1 GiB).

    python bench/bench_animate_cpu.py [--frames 16] [--reps 3] [--threads N] [--identity-projection P]
        [--projection-reader PATH] [--default-malloc] [--process 5]

Prints the one-off costs (imports, loading the animator with its generator and CLIP), the first
animation split into its stages (the face's image, CLIP and the recurrent motion; the identity
Jacobian; the frames) and the later animations, each with the peak memory (max RSS) reached by then.
``--process N`` also runs ``python animate.py`` (the default command) N times as whole processes from
an empty folder and prints their median wall time and peak memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def whole_process(runs: int) -> tuple[list[float], list[float]]:
    """(wall seconds, max RSS MB) of each of ``runs`` runs of ``python animate.py`` in an empty folder."""
    walls, rss = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(runs):
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, str(ROOT / "animate.py")], cwd=folder,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, status, usage = os.wait4(proc.pid, 0)
            walls.append(time.perf_counter() - start)
            rss.append(usage.ru_maxrss / 1024)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"animate.py failed: {proc.stderr.read().decode()[-2000:]}")
    return walls, rss


class Stages:
    """Wall time and max RSS of the pipeline's stages, by wrapping FaceAnimator methods."""

    def __init__(self, cls, names):
        self.times: dict[str, float] = {}
        for name in names:
            self._wrap(cls, name)

    def _wrap(self, cls, name):
        inner = getattr(cls, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

        setattr(cls, name, timed)


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
    ap.add_argument("--process", type=int, default=0, metavar="N", help="also time N whole `python animate.py` runs")
    args = ap.parse_args()
    # first, while this process is small: a child's max RSS counts the pages it shared with its parent
    process = whole_process(args.process) if args.process else None
    from src.utils.cpu_memory import reuse_freed_memory

    tuned = False if args.default_malloc else reuse_freed_memory()
    print(f"allocator: {'freed memory reused (mallopt)' if tuned else 'glibc defaults'}")
    t0 = time.perf_counter()
    import torch

    from src.pipeline import FaceAnimator

    if args.threads:
        torch.set_num_threads(args.threads)
    t1, rss_import = time.perf_counter(), max_rss_mb()
    module = FaceAnimator.from_pretrained(args.checkpoint, overrides={"inference.projection_reader": args.projection_reader}
                                          if args.projection_reader else None)
    kw = {"identity_projection": args.identity_projection}
    t2, rss_load = time.perf_counter(), max_rss_mb()
    stages = Stages(FaceAnimator, ["identity_jacobian", "synthesize"])
    w = module.sample_latents(1, seed=0)
    with torch.no_grad():
        module.animate(w, ["The person is smiling."], num_frames=args.frames, **kw)
    t3, rss_first = time.perf_counter(), max_rss_mb()
    first = dict(stages.times)
    times = []
    prompts = ["The person is winking.", "The person is opening mouth.", "The person is angry."]
    with torch.no_grad():
        for i in range(args.reps):
            s = time.perf_counter()
            module.animate(w, [prompts[i % len(prompts)]], num_frames=args.frames, **kw)
            times.append(time.perf_counter() - s)
    res = module.generator.img_resolution
    jac, frames = first.get("identity_jacobian", 0.0), first.get("synthesize", 0.0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {res} px, {args.frames} frames, "
          f"identity projection {args.identity_projection if args.identity_projection is not None else 'as stored'}")
    print("| stage | seconds | max RSS by then (MB) |\n|---|---|---|")
    print(f"| imports (torch, pipeline) | {t1 - t0:.2f} | {rss_import:.0f} |")
    print(f"| load animator + G + CLIP | {t2 - t1:.2f} | {rss_load:.0f} |")
    print(f"| first animation | {t3 - t2:.2f} | {rss_first:.0f} |")
    print(f"| - face image, CLIP, motion, projection | {t3 - t2 - jac - frames:.2f} | |")
    print(f"| - identity Jacobian | {jac:.2f} | |")
    print(f"| - {args.frames} frames | {frames:.2f} | |")
    print(f"| animation, median of {args.reps} | {statistics.median(times):.2f} | {max_rss_mb():.0f} |")
    if process:
        walls, rss = process
        print(f"\n`python animate.py`, {args.process} whole processes: median {statistics.median(walls):.2f} s "
              f"({min(walls):.2f}-{max(walls):.2f}), max RSS {max(rss):.0f} MB "
              f"(median {statistics.median(rss):.0f})")


if __name__ == "__main__":
    main()
