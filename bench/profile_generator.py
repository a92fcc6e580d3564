"""Where the time of a generator forward goes: torch.profiler table of CUDA kernels.

    python bench/profile_generator.py [--res 1024] [--batch 16] [--channels-last] [--rows 30]

Config f (channel_base 32768, channel_max 512, 8 mapping layers), fp16 in the top 4 resolutions,
cudnn.benchmark on, noise_mode='random'. Prints ms/image and the kernels sorted by CUDA time,
so that optimisation targets the kernels that matter (see bench/bench_generator.py for timings).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_generator import _make_g, _time_ms  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--rows", type=int, default=30)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: needs a CUDA device", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    G = _make_g(args.res, True, 32768, args.channels_last)
    z = torch.randn(args.batch, 512, device="cuda")
    with torch.no_grad():
        ms = _time_ms(lambda: G(z, None, noise_mode="random"), 10)
        print(f"# {args.res} px, batch {args.batch}, fp16 top 4, channels_last={args.channels_last}: "
              f"{ms:.2f} ms/batch, {ms / args.batch:.3f} ms/image")
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for _ in range(3):
                G(z, None, noise_mode="random")
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
