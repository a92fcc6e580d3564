"""Throughput of StyleGAN training steps (G + D + lazy PL/R1 amortised + EMA) at 128 px.

    python bench/bench_gan_training.py                      # shipped config, fp16_res/bf16/fp32
    python bench/bench_gan_training.py --batch 64 128 --precision fp16_res --iters 160
    python bench/bench_gan_training.py --lightning           # also time trainer.fit (Lightning overhead)

Builds the model from conf/task/stylegan.yaml (``model`` node; overrides with --set key=value,
OmegaConf dotlist), runs ``--warmup`` iterations, then times ``--iters`` iterations (a multiple of
16 so lazy R1 and PL are amortised exactly) with one CUDA sync at each end. Prints a table of
images/s, ms/iteration and peak GPU memory; also the renderer's own cost per batch.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


# The official StyleGAN2-ADA code (NVlabs/stylegan2-ada-pytorch, its CUDA ops) training this network
# (128 px, channel_base 8192, channel_max 256, z/w 256, 4 mapping layers, no augmentation, R1 and
# path-length regularisation at the official intervals), timed side by side on one H100 80GB HBM3.
OFFICIAL_IMG_S = {64: 437.0, 256: 800.0}


def load_model_cfg(overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "task" / "stylegan.yaml")
    model = OmegaConf.to_container(cfg.model, resolve=False)
    # Interpolations that need the Hydra run (paths, seed) are not wanted in a benchmark.
    model.update(seed=0, output=dict(log_every=0, export_path=None),
                 validation=dict(sample_dir=None, feature_clip_path=None, oracle_path=None))
    model.pop("_target_")
    if overrides:
        merged = OmegaConf.merge(OmegaConf.create(model), OmegaConf.from_dotlist(list(overrides)))
        model = OmegaConf.to_container(merged, resolve=True)
    return model


def with_precision_batch(model, precision, batch_size):
    """The model kwargs with ``precision.mode`` and ``optim.batch_size`` replaced."""
    return dict(model, precision={**model["precision"], "mode": precision},
                optim={**model["optim"], "batch_size": batch_size})


def detach_from_lightning(module):
    """Let training_step run without a Trainer: plain optimizers, plain backward, no logging."""
    opts = module.configure_optimizers()
    module.optimizers = lambda: opts
    module.manual_backward = lambda loss: loss.backward()
    module.log = lambda *a, **k: None
    module.log_dict = lambda *a, **k: None
    return module


class FixedReals:
    """Stands in for the render prefetcher: one batch rendered once, to time training without the renderer."""

    def __init__(self, prefetcher, generator, device):
        self.batch = prefetcher.take(generator, device)
        self.state_before_pending = None

    def prefetch(self, generator, device):
        pass

    def take(self, generator, device):
        return self.batch


def bench_raw(model_kwargs, device, warmup, iters, fixed_reals=False, eager_render=False):
    from src.embedded.training.gan import StyleGANModule

    torch.manual_seed(0)
    m = StyleGANModule(**model_kwargs).to(device)
    if eager_render:  # precision.cuda_graphs without its graph of the reals' render
        m._reals.graphs = None
    if fixed_reals:
        m._ensure_generator()
        m._reals = FixedReals(m._reals, m._gen, device)
    m.train()
    m.G_ema.eval()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = bool(m.precision_cfg.allow_tf32)
        torch.backends.cudnn.allow_tf32 = bool(m.precision_cfg.allow_tf32)
    detach_from_lightning(m)
    if device.type == "cuda":  # the peak includes the warm-up: CUDA graphs keep the memory they record in
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        m.training_step(i, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(iters):
        m.training_step(i, i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    finite = all(torch.isfinite(p).all() for p in m.G.parameters())
    B = m.batch_size
    return dict(img_s=B * iters / dt, ms_it=1000 * dt / iters, peak_gb=peak, finite=bool(finite))


def profile_raw(model_kwargs, device, iters=16, top=14):
    """Where an iteration's time goes: GPU kernel time vs wall time, kernel launches per iteration."""
    from torch.profiler import profile

    from bench.profiling import activities, print_summary
    from src.embedded.training.gan import StyleGANModule

    torch.manual_seed(0)
    m = detach_from_lightning(StyleGANModule(**model_kwargs).to(device))
    m.train()
    m.G_ema.eval()
    for i in range(64):  # past the CUDA graphs' warm-up (32) and the recording of every variant
        m.training_step(i, i)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    with profile(activities=activities(), record_shapes=True) as prof:
        for i in range(iters):
            m.training_step(i, i)
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / iters * 1000
    print_summary(prof, iters, wall, f"batch {m.batch_size}, {model_kwargs['precision']['mode']}", top)


def bench_render(resolution, batch, device, reps=20):
    from src.embedded import render, sample_params

    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        render(sample_params(batch, g, "cpu").to(device), resolution)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        p = sample_params(batch, g, "cpu")
        if device.type == "cuda":
            p = p.pin_memory().to(device, non_blocking=True)
        render(p, resolution)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - t0) / reps


def bench_lightning(model_kwargs, iters):
    import pytorch_lightning as pl

    from src.embedded.datamodule import RenderIndexDataModule
    from src.embedded.training.gan import StyleGANModule

    m = StyleGANModule(**model_kwargs)
    trainer = pl.Trainer(accelerator="gpu", devices=1, precision="32-true", max_steps=2 * iters, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0)
    dm = RenderIndexDataModule(steps_per_epoch=iters + 16)
    t0 = time.perf_counter()
    trainer.fit(m, datamodule=dm)
    torch.cuda.synchronize()
    return dict(img_s=m.batch_size * iters / (time.perf_counter() - t0))


def table_row(label, batch, r):
    ref = OFFICIAL_IMG_S.get(batch)
    ratio = f"{r['img_s'] / ref:.2f}x" if ref else "-"
    return f"| {label} | {batch} | {r['img_s']:.0f} | {ratio} | {r['ms_it']:.1f} | {r['peak_gb']:.2f} | {r['finite']} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[64])
    ap.add_argument("--precision", nargs="+", default=["fp16_res", "bf16", "fp32"])
    ap.add_argument("--warmup", type=int, default=32)
    ap.add_argument("--iters", type=int, default=160)
    ap.add_argument("--ops", default="auto", help="src.ops impl: auto | cuda | ref")
    ap.add_argument("--lightning", action="store_true", help="also time trainer.fit (incl. Lightning overhead)")
    ap.add_argument("--fixed-reals", action="store_true", help="also time each row with one fixed real batch "
                    "(the training step without the renderer)")
    ap.add_argument("--eager-render", action="store_true", help="also time each row with the reals rendered "
                    "eagerly (precision.cuda_graphs records the render as a graph too): that graph's gain")
    ap.add_argument("--profile", action="store_true", help="also profile the first precision at each batch")
    ap.add_argument("--set", nargs="*", default=[], help="model overrides, e.g. G_kwargs.w_dim=512 regularization.r1_gamma=0.1")
    args = ap.parse_args()
    if args.iters % 16:
        ap.error("--iters must be a multiple of 16 (lazy R1 interval) to amortise regularisation exactly")

    import src.ops

    src.ops.configure(impl=args.ops)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}  torch {torch.__version__}")
    base = load_model_cfg(args.set)
    print(f"resolution {base['resolution']}  G {base['G_kwargs']}")
    print(f"render only: {bench_render(base['resolution'], args.batch[0], device):.2f} ms per batch of {args.batch[0]}")
    print("| precision | batch | img/s | x official | ms/iter | peak GB | finite |")
    print("|---|---|---|---|---|---|---|")
    for prec in args.precision:
        for b in args.batch:
            kw = with_precision_batch(base, prec, b)
            try:
                r = bench_raw(kw, device, args.warmup, args.iters)
                print(table_row(prec, b, r), flush=True)
                if args.fixed_reals:
                    r = bench_raw(kw, device, args.warmup, args.iters, fixed_reals=True)
                    print(table_row(f"{prec}, fixed reals", b, r), flush=True)
                if args.eager_render:
                    r = bench_raw(kw, device, args.warmup, args.iters, eager_render=True)
                    print(table_row(f"{prec}, eager render", b, r), flush=True)
            except Exception as e:  # report and go on with the next configuration
                print(f"| {prec} | {b} | failed: {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | |",
                      flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.profile and device.type == "cuda":
        for b in args.batch:
            profile_raw(with_precision_batch(base, args.precision[0], b), device)
    if args.lightning and device.type == "cuda":
        kw = with_precision_batch(base, args.precision[0], args.batch[0])
        r = bench_lightning(kw, args.iters)
        print(f"trainer.fit ({args.precision[0]}, batch {args.batch[0]}, {args.iters} it, incl. startup): "
              f"{r['img_s']:.0f} img/s")


if __name__ == "__main__":
    main()
