"""Benchmark the custom ops: CUDA kernels vs the pure-PyTorch reference on StyleGAN-like shapes.

Prints one table row per (op, shape, dtype, pass): ref ms, cuda ms, speedup (ref / cuda).
Timing: CUDA events, median over repeated runs after warm-up. Needs a CUDA device.

    python bench/bench_ops.py [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.ops import bias_act as ba  # noqa: E402
from src.ops import build, policy  # noqa: E402
from src.ops import upfirdn2d as ufd  # noqa: E402


def _time_ms(fn, reps: int, warmup: int = 5, inner: int = 5) -> float:
    """Median over `reps` of the mean time of `inner` back-to-back calls (CUDA events)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return statistics.median(times)


def _spin_up(seconds: float = 1.0) -> None:
    """Keep the GPU busy for a moment so clocks have ramped up before the first timing."""
    a = torch.randn(4096, 4096, device="cuda")
    t0 = time.time()
    while time.time() - t0 < seconds:
        for _ in range(20):
            a = (a @ a).clamp_(-1, 1)
        torch.cuda.synchronize()


def _cases():
    """Yield (name, shape, dtype, make_fn(impl) -> (forward_fn, fwd_bwd_fn))."""
    f = ufd.setup_filter([1, 3, 3, 1], device="cuda")

    def bias_act_case(shape, dtype, clamp):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        b = torch.randn(shape[1], device="cuda", dtype=dtype)
        xg = x.clone().requires_grad_()
        bg = b.clone().requires_grad_()
        dy = torch.randn_like(x)

        def make(impl):
            def fwd():
                with torch.no_grad():
                    ba.bias_act(x, b, act="lrelu", clamp=clamp, impl=impl)

            def fwd_bwd():
                y = ba.bias_act(xg, bg, act="lrelu", clamp=clamp, impl=impl)
                torch.autograd.grad(y, (xg, bg), dy)
            return fwd, fwd_bwd
        return make

    def ufd_case(shape, dtype, op, **kw):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        xg = x.clone().requires_grad_()
        dy = torch.randn_like(op(x, f, impl="ref", **kw))

        def make(impl):
            def fwd():
                with torch.no_grad():
                    op(x, f, impl=impl, **kw)

            def fwd_bwd():
                y = op(xg, f, impl=impl, **kw)
                torch.autograd.grad(y, xg, dy)
            return fwd, fwd_bwd
        return make

    big = (16, 512, 64, 64)
    for dtype in (torch.float32, torch.float16):
        yield "bias_act lrelu", big, dtype, bias_act_case(big, dtype, None)
        yield "bias_act lrelu clamp=256", big, dtype, bias_act_case(big, dtype, 256)
    img = (16, 256, 128, 128)
    for dtype in (torch.float32, torch.float16):
        yield "upsample2d x2 [1,3,3,1]", img, dtype, ufd_case(img, dtype, ufd.upsample2d, up=2)
        yield "downsample2d x2 [1,3,3,1]", img, dtype, ufd_case(img, dtype, ufd.downsample2d, down=2)
        yield "filter2d [1,3,3,1]", img, dtype, ufd_case(img, dtype, ufd.filter2d)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: bench_ops needs a CUDA device")
    policy.configure(impl="auto", on_build_failure="error")
    t0 = time.time()
    build.get_plugin()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"extension ready in {time.time() - t0:.1f}s (incl. build if not cached)")
    _spin_up()
    header = f"{'op':<28} {'shape':<20} {'dtype':<8} {'pass':<8} {'ref ms':>9} {'cuda ms':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for name, shape, dtype, make in _cases():
        ref, cuda = make("ref"), make("cuda")
        for i, pass_name in enumerate(("fwd", "fwd+bwd")):
            t_ref = _time_ms(ref[i], args.reps)
            t_cuda = _time_ms(cuda[i], args.reps)
            print(f"{name:<28} {'x'.join(map(str, shape)):<20} {str(dtype).split('.')[-1]:<8} "
                  f"{pass_name:<8} {t_ref:>9.3f} {t_cuda:>9.3f} {t_ref / t_cuda:>7.1f}x", flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
