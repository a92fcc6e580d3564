"""Benchmark the StyleGAN2-ADA generator forward (mapping + synthesis) on one CUDA device.

Rows: resolution x batch x precision (fp32 / fp16 top layers = num_fp16_res 4 + conv_clamp 256)
x ops impl (cuda kernels / ref) x modconv path (x eager / CUDA-graph replays with ``--cuda-graphs``).
Columns: ms per batch, ms per image, images/s, peak memory above the weights, and the max
|difference| of the image (noise_mode='const') to the first row of its group (cuda ops, same
precision and batch), i.e. whole-G ref-vs-cuda (and graph-vs-eager) agreement. Timing: CUDA
events, median of ``--reps`` runs after warm-up, under torch.no_grad, noise_mode='random'
(realistic: draws noise) or ``--noise const``.
Config f: channel_base 32768, channel_max 512, 8 mapping layers, z/w 512.

    python bench/bench_generator.py [--res 256 1024] [--batch 1 16] [--reps 20] [--no-ref]
                                    [--channel-base 32768] [--channels-last] [--cudnn-benchmark]
                                    [--noise random|const] [--cuda-graphs]
With --cuda-graphs every cuda-ops row is followed by the same call replayed as a CUDA graph
(src/ops/graph_cache.py; recorded during the warm-up, its memory pool counted in the peak).
The last columns: the peak of all memory allocated (weights included), and at 1024 px with batch 1
or 16 our ms/image over the anchors of issue #25 (ours / theirs, below 1: faster): NVIDIA's official
code in the row's precision, rosinality's (fp32 only) and the goal. The anchors were timed with
noise const: pass --noise const to compare like with like.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import src.ops  # noqa: E402
from src.ops.graph_cache import GraphCache, module_state  # noqa: E402
from src.stylegan import Generator  # noqa: E402
from src.utils.errors import UserError, exit_code  # noqa: E402

# Issue #25's anchors, timed side by side on one H100 (config-f 1024, random weights, noise const),
# ms per image by batch: NVIDIA's official code with its CUDA ops, rosinality's with its ops (fp32 only),
# and the goals. A row compares with official code of its own precision.
ANCHOR_RES = 1024
OFFICIAL_MS = {16: {"fp16": 3.48, "fp32": 4.03}, 1: {"fp16": 16.3, "fp32": 14.7}}
ROSINALITY_FP32_MS = {16: 3.87, 1: 10.3}
GOAL_MS = {16: 1.2, 1: 4.0}


class _Parser(argparse.ArgumentParser):
    """Bad command-line input is one 'error:' line and exit status 2."""

    def error(self, message):
        raise UserError(message)


def anchor_cells(res: int, batch: int, fp16: bool, ms_per_image: float) -> list[str]:
    """ours / theirs for the official code (same precision), rosinality (fp32) and the goal."""
    if res != ANCHOR_RES or batch not in GOAL_MS:
        return ["-", "-", "-"]
    official = OFFICIAL_MS[batch]["fp16" if fp16 else "fp32"]
    return [f"{ms_per_image / ref:.2f}" for ref in (official, ROSINALITY_FP32_MS[batch], GOAL_MS[batch])]


def _time_ms(fn, reps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _make_g(res: int, fp16: bool, channel_base: int, channels_last: bool) -> Generator:
    torch.manual_seed(0)
    syn = dict(channel_base=channel_base, channel_max=512, num_fp16_res=4 if fp16 else 0,
               conv_clamp=256 if fp16 else None)
    if channels_last:
        syn["fp16_channels_last"] = True
    G = Generator(z_dim=512, w_dim=512, img_resolution=res, img_channels=3, mapping_kwargs=dict(num_layers=8),
                  synthesis_kwargs=syn)
    return G.eval().requires_grad_(False).cuda()


def main(argv=None) -> int:
    return exit_code(lambda: run(argv))


def run(argv=None) -> None:
    ap = _Parser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--channel-base", type=int, default=32768)
    ap.add_argument("--no-ref", action="store_true", help="skip the (slow) reference-ops rows")
    ap.add_argument("--channels-last", action="store_true", help="also time fp16 blocks in channels_last")
    ap.add_argument("--fused", action="store_true", help="also time the fused (grouped) modconv at batch > 1")
    ap.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    ap.add_argument("--noise", choices=("random", "const"), default="random",
                    help="noise mode of the timed calls (random: draws noise, as training does)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="also time each cuda-ops row replayed as a CUDA graph, next to the eager row")
    args = ap.parse_args(argv)
    bad = [r for r in args.res if r < 4 or r & (r - 1)]
    if bad:
        raise UserError(f"--res {bad[0]}: a resolution is a power of two, at least 4")
    if min(args.batch) < 1 or args.reps < 1:
        raise UserError("--batch and --reps must be at least 1")
    if not torch.cuda.is_available():
        raise UserError("needs a CUDA device")
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    dev = torch.cuda.get_device_name()
    print(f"# generator forward benchmark on {dev}; torch {torch.__version__}; cudnn.allow_tf32="
          f"{torch.backends.cudnn.allow_tf32}; cudnn.benchmark={torch.backends.cudnn.benchmark}; "
          f"channel_base {args.channel_base}; median of {args.reps}; noise {args.noise}")
    print(f"# anchors ({ANCHOR_RES} px, ms/image, issue #25, one H100, noise const): batch 16: NVIDIA official "
          f"{OFFICIAL_MS[16]['fp16']} fp16 / {OFFICIAL_MS[16]['fp32']} fp32, rosinality {ROSINALITY_FP32_MS[16]} fp32, "
          f"goal {GOAL_MS[16]}; batch 1: official {OFFICIAL_MS[1]['fp16']} fp16 / {OFFICIAL_MS[1]['fp32']} fp32, "
          f"rosinality {ROSINALITY_FP32_MS[1]} fp32, goal {GOAL_MS[1]}; ratio = ours / anchor")
    header = ("| res | batch | precision | ops | modconv | ms/batch | ms/image | images/s | peak MiB | "
              "max|d img| vs cuda row | peak GiB total | ÷ official | ÷ rosinality fp32 | ÷ goal |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for res in args.res:
        for fp16 in (False, True):
            variants = [("cuda", False, None)]
            if args.channels_last and fp16:
                variants.append(("cuda", True, None))
            if args.fused:
                variants.append(("cuda", False, True))
            variants = [v + (graphs,) for v in variants for graphs in ((False, True) if args.cuda_graphs else (False,))]
            if not args.no_ref:
                variants.append(("ref", False, None, False))
            for batch in args.batch:
                z = torch.randn(batch, 512, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
                baseline = None
                for impl, channels_last, fused, graphs in variants:
                    if fused and batch == 1:
                        continue  # batch 1 already uses the fused path by default
                    G = _make_g(res, fp16, args.channel_base, channels_last)
                    src.ops.configure(impl=impl)
                    cache = GraphCache() if graphs else None
                    with torch.no_grad():
                        def forward(noise_mode):
                            def fn(latent):
                                return G(latent, None, noise_mode=noise_mode, fused_modconv=fused)
                            if cache is None:
                                return fn(z)
                            return cache.run(fn, z, key=noise_mode, state=module_state(G))

                        img_const = forward("const")
                        if graphs:  # timing records its own graph after the reset: its pool counts in the peak
                            cache = GraphCache()
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        base_mem = torch.cuda.memory_allocated()

                        def call():
                            forward(args.noise)

                        ms = _time_ms(call, args.reps)
                        peak_total = torch.cuda.max_memory_allocated()
                        peak = (peak_total - base_mem) / 2**20
                    if baseline is None:
                        baseline = img_const
                        diff = "-"
                    else:
                        diff = f"{float((img_const - baseline).abs().max()):.2e}"
                    path = "fused" if (fused or batch == 1) else "shared-weight"
                    if channels_last:
                        path += "+NHWC"
                    if graphs:
                        path += "+graph"
                    prec = "fp16 top4" if fp16 else "fp32(tf32)"
                    ratios = " | ".join(anchor_cells(res, batch, fp16, ms / batch))
                    print(f"| {res} | {batch} | {prec} | {impl} | {path} | {ms:.2f} | {ms / batch:.3f} | "
                          f"{1000.0 * batch / ms:.1f} | {peak:.0f} | {diff} | {peak_total / 2**30:.2f} | {ratios} |",
                          flush=True)
                    del G
                    torch.cuda.empty_cache()
    src.ops.configure(impl="auto")


if __name__ == "__main__":
    sys.exit(main())
