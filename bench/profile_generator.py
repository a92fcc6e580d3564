"""Where the time of a generator forward goes: GPU kernel time against wall time, and the kernels.

    python bench/profile_generator.py [--res 1024] [--batch 16] [--channels-last] [--cuda-graphs]
        [--noise const|random] [--rows 20]

Config f (channel_base 32768, channel_max 512, 8 mapping layers), fp16 in the top 4 resolutions,
cudnn.benchmark on, no gradients. Prints ms/image, then the profile of 3 calls (bench/profiling.py):
the share of the wall time the GPU spends in kernels (launch overhead and host gaps are the rest),
kernels and launches per call, the kernels by GPU time and, for eager calls, the aten ops that
launched them. With --cuda-graphs the calls are replays of one recorded graph (src/ops/graph_cache.py):
what is left is kernel time. bench/bench_generator.py gives the timings with the anchors.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_generator import _make_g, _time_ms  # noqa: E402
from bench.profiling import activities, print_summary  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels-last", action="store_true", help="the fp16 blocks with NHWC activations")
    ap.add_argument("--cuda-graphs", action="store_true", help="profile replays of a recorded CUDA graph")
    ap.add_argument("--noise", choices=("const", "random"), default="const")
    ap.add_argument("--rows", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    G = _make_g(args.res, True, 32768, args.channels_last)
    z = torch.randn(args.batch, 512, device="cuda")
    with torch.no_grad():
        ws = G.mapping(z, None)
        call = lambda: G.synthesis(ws, noise_mode=args.noise)  # noqa: E731
        if args.cuda_graphs:
            from src.ops.graph_cache import GraphCache, module_state

            cache = GraphCache(capacity=1)
            call = lambda: cache.run(lambda w: G.synthesis(w, noise_mode=args.noise), ws,  # noqa: E731
                                     state=module_state(G))
        ms = _time_ms(call, 10)
        print(f"# {torch.cuda.get_device_name()}: {args.res} px, batch {args.batch}, fp16 top 4, noise "
              f"{args.noise}, channels_last={args.channels_last}, cuda_graphs={args.cuda_graphs}: "
              f"{ms:.2f} ms/batch, {ms / args.batch:.3f} ms/image")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.profiler.profile(activities=activities(), record_shapes=True) as prof:
            for _ in range(3):
                call()
            torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / 3 * 1000
    print_summary(prof, 3, wall, f"generator forward, batch {args.batch}", top=args.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
