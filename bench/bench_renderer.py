"""Renderer throughput: prints images/s at 64/128/256 px for a few batch sizes, CPU and CUDA.

    python bench/bench_renderer.py [--repeats 3] [--cpu-only]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.embedded import render, sample_params  # noqa: E402


def bench(device: str, resolution: int, batch: int, repeats: int) -> tuple[float, float]:
    """(images/s by wall clock, images/s per second of process CPU time; the latter is robust to other
    processes competing for the cores, and for CUDA equals the former)."""
    params = sample_params(batch, torch.Generator().manual_seed(0)).to(device)
    render(params, resolution)  # warm-up (allocator, kernels)
    if device == "cuda":
        torch.cuda.synchronize()
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        render(params, resolution)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return batch / best, (batch / best_cpu if device == "cpu" else batch / best)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    plans = {"cpu": {64: [16, 64], 128: [16, 64], 256: [4, 16]},
             "cuda": {64: [256, 2048], 128: [256, 1024, 4096], 256: [64, 512]}}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.cpu_only else [])
    print(f"torch {torch.__version__}, cpu threads {torch.get_num_threads()}"
          + (f", gpu {torch.cuda.get_device_name()}" if "cuda" in devices else ""))
    print(f"{'device':>6} {'res':>5} {'batch':>6} {'images/s':>10} {'per cpu-s':>10}")
    for dev in devices:
        for res, batches in plans[dev].items():
            for b in batches:
                wall, per_cpu = bench(dev, res, b, args.repeats)
                print(f"{dev:>6} {res:>5} {b:>6} {wall:>10.0f} {per_cpu:>10.0f}", flush=True)


if __name__ == "__main__":
    main()
