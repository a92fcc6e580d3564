"""Benchmark the custom ops: CUDA kernels vs the pure-PyTorch reference on StyleGAN-like shapes.

Prints one table row per (op, shape, dtype, pass): ref ms, cuda ms, speedup (ref / cuda).
A second table covers the generator's fused epilogue, ``bias_act(x, b, scale=dcoefs,
addend=noise)`` (forward under no_grad, generator shapes, fp16): the reference (addcmul, bias
add, lrelu, gain, clamp as separate PyTorch ops), the pre-fusion CUDA path (addcmul + the
bias_act kernel) and the fused kernel, with the fused kernel's achieved bandwidth. A third table puts plain ``bias_act`` against the
memory floor of any out-of-place elementwise op, a device copy (``y.copy_(x)``: one read, one write):
ref/copy is the most any single-pass kernel could gain over the reference.
Timing: CUDA events, median over repeated runs after warm-up. Needs a CUDA device.

    python bench/bench_ops.py [--reps 20] [--only {all,ops,epilogue,roofline}]
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


EPILOGUE_SHAPES = ((16, 512, 64, 64), (16, 128, 256, 256), (16, 64, 512, 512), (16, 32, 1024, 1024))


def _epilogue_rows(reps: int):
    """Yield (shape, dtype, ref ms, unfused-cuda ms, fused ms, fused GB/s) for the SynthesisLayer
    epilogue y = clamp(lrelu(x * dcoefs + noise + b) * sqrt(2), 256) at generator shapes."""
    dtype = torch.float16
    for shape in EPILOGUE_SHAPES:
        n, c, h, w = shape
        x = torch.randn(shape, device="cuda", dtype=dtype)
        b = torch.randn(c, device="cuda", dtype=dtype)
        # Operands already in x.dtype, so the timings are of the epilogue itself (the generator
        # casts its fp32 dcoefs / noise first, the same small cost for every variant).
        s = (torch.rand(n, c, device="cuda") + 0.5).to(dtype)
        a = torch.randn(n, 1, h, w, device="cuda").to(dtype)
        kw = dict(act="lrelu", clamp=256)

        def ref():
            ba.bias_act(x, b, scale=s, addend=a, impl="ref", **kw)

        def unfused():
            ba.bias_act(torch.addcmul(a, x, s.reshape(n, c, 1, 1)), b, impl="cuda", **kw)

        def fused():
            ba.bias_act(x, b, scale=s, addend=a, impl="cuda", **kw)

        with torch.no_grad():
            times = [_time_ms(fn, reps) for fn in (ref, unfused, fused)]
        # The fused kernel reads x, the addend (once per sample), scale and bias, and writes y.
        nbytes = (2 * x.numel() + a.numel() + s.numel() + b.numel()) * x.element_size()
        yield shape, dtype, *times, nbytes / (times[2] * 1e-3) / 1e9
        del x, a
        torch.cuda.empty_cache()


def _epilogue_table(reps: int) -> None:
    print()
    header = (f"{'fused epilogue (fwd, no_grad)':<30} {'shape':<18} {'dtype':<8} {'ref ms':>8} "
              f"{'unfused ms':>10} {'cuda ms':>8} {'ref/cuda':>8} {'unf/cuda':>8} {'GB/s':>7}")
    print(header)
    print("-" * len(header))
    for shape, dtype, t_ref, t_unf, t_cuda, gbs in _epilogue_rows(reps):
        print(f"{'bias_act scale+addend lrelu':<30} {'x'.join(map(str, shape)):<18} "
              f"{str(dtype).split('.')[-1]:<8} {t_ref:>8.3f} {t_unf:>10.3f} {t_cuda:>8.3f} "
              f"{t_ref / t_cuda:>7.2f}x {t_unf / t_cuda:>7.2f}x {gbs:>7.0f}", flush=True)
    print("ref: addcmul + bias add + lrelu + gain + clamp in PyTorch; unfused: addcmul + bias_act "
          "kernel (the pre-fusion CUDA path); cuda: the fused kernel; GB/s: its bytes read + "
          "written / its time")


def _roofline_table(reps: int) -> None:
    print()
    header = (f"{'bias_act vs the copy floor (fwd)':<34} {'dtype':<8} {'copy ms':>8} {'ref ms':>8} {'cuda ms':>8} "
              f"{'ref/cuda':>8} {'ref/copy':>8} {'cuda/copy':>9} {'cuda GB/s':>9}")
    print(header)
    print("-" * len(header))
    shape = (16, 512, 64, 64)
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(shape, device="cuda", dtype=dtype)
        b = torch.randn(shape[1], device="cuda", dtype=dtype)
        y = torch.empty_like(x)
        for clamp in (None, 256):
            with torch.no_grad():
                t_copy = _time_ms(lambda: y.copy_(x), reps)
                t_ref = _time_ms(lambda: ba.bias_act(x, b, act="lrelu", clamp=clamp, impl="ref"), reps)
                t_cuda = _time_ms(lambda: ba.bias_act(x, b, act="lrelu", clamp=clamp, impl="cuda"), reps)
            name = f"lrelu{' clamp=256' if clamp else ''} {'x'.join(map(str, shape))}"
            gbs = 2 * x.numel() * x.element_size() / (t_cuda * 1e-3) / 1e9
            print(f"{name:<34} {str(dtype).split('.')[-1]:<8} {t_copy:>8.3f} {t_ref:>8.3f} {t_cuda:>8.3f} "
                  f"{t_ref / t_cuda:>7.2f}x {t_ref / t_copy:>7.2f}x {t_cuda / t_copy:>9.2f} {gbs:>9.0f}", flush=True)
        del x, y
        torch.cuda.empty_cache()
    print("copy: y.copy_(x), the least memory traffic of an out-of-place elementwise op; ref/copy bounds "
          "what a one-pass kernel can gain over the reference")


def _ops_table(reps: int) -> None:
    header = f"{'op':<28} {'shape':<20} {'dtype':<8} {'pass':<8} {'ref ms':>9} {'cuda ms':>9} {'speedup':>8}"
    print(header)
    print("-" * len(header))
    for name, shape, dtype, make in _cases():
        ref, cuda = make("ref"), make("cuda")
        for i, pass_name in enumerate(("fwd", "fwd+bwd")):
            t_ref = _time_ms(ref[i], reps)
            t_cuda = _time_ms(cuda[i], reps)
            print(f"{name:<28} {'x'.join(map(str, shape)):<20} {str(dtype).split('.')[-1]:<8} "
                  f"{pass_name:<8} {t_ref:>9.3f} {t_cuda:>9.3f} {t_ref / t_cuda:>7.1f}x", flush=True)
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--only", choices=("all", "ops", "epilogue", "roofline"), default="all",
                        help="which table(s) to print")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: bench_ops needs a CUDA device")
    policy.configure(impl="auto", on_build_failure="error")
    t0 = time.time()
    build.get_plugin()
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"extension ready in {time.time() - t0:.1f}s (incl. build if not cached)")
    _spin_up()
    if args.only in ("all", "ops"):
        _ops_table(args.reps)
    if args.only in ("all", "epilogue"):
        _epilogue_table(args.reps)
    if args.only in ("all", "roofline"):
        _roofline_table(args.reps)


if __name__ == "__main__":
    main()
