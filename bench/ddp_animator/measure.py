"""The measured loop of the benchmark: warm-up, timed steps with gradient sync, the same steps
under ``no_sync`` and one raw all-reduce, gathered from every rank into one result.

How the time is measured, and why this way
-------------------------------------------
* CUDA events, not host clocks: every phase boundary records an event on the compute stream and
  all events are read after ONE torch.cuda.synchronize() at the end of a phase of the benchmark
  (warm-up | timed steps with gradient sync | timed steps under ``no_sync``). No synchronisation is
  added inside a step, so the GPU pipeline runs as in training (the per-sample seeds stay on the
  CPU, as ``AnimatorModule.transfer_batch_to_device`` leaves them under Lightning).
  An event pair measures GPU time between the two points, including GPU idle time caused by the
  host, which is a real cost of the step. The benchmark's phases are separated by
  synchronize + barrier so that every rank starts a phase together. On CPU the clock is
  time.perf_counter (CPU ops are synchronous).
* Forward split: forward hooks on ``generator.mapping`` / ``generator.synthesis`` time the
  generator (the input render and the frames), a wrapper of the CLIP's ``encode_image`` times the
  loss CLIP (calls with grad enabled) and the input encoder (calls under no_grad) separately; the
  rest of the forward (text encoders, animator, LPIPS, losses) is the forward minus those.
* Backward and gradient sync: DDP launches the bucketed all-reduce from autograd hooks while the
  backward is still running and waits for it at the end of ``loss.backward()``; most of the
  communication is hidden behind the generator's backward, so "backward" includes the part of
  the all-reduce that is not overlapped and the all-reduce has no interval of its own. Its cost
  is therefore measured two ways: (1) exposed cost = median step time with gradient sync minus
  the median step time of the same number of steps under ``ddp.no_sync()`` (identical work, no
  communication); (2) the raw time of one all-reduce of a flat fp32 buffer the size of the
  trainable gradients (bytes reported) = the cost if nothing were overlapped. Under ``no_sync``
  DDP also skips its per-forward broadcast of the module buffers (broadcast_buffers=True: the
  frozen generator's noise/filter buffers, ``model.buffer_bytes``), so (1) is the whole exposed
  DDP communication. Under ``no_sync`` the ranks drift apart (no sync points), which is harmless
  for timing: the weights only set the values, not the amount of work.
* Throughput: frames/s = K * B * train_frames / median step time (max over ranks per step);
  per GPU = that / K; scaling efficiency = frames/s / (K * frames/s of the K=1 baseline JSON).
* Memory: torch.cuda.max_memory_allocated of every rank over warm-up and timed steps (weights
  included; weights alone reported too).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn

from bench.ddp_animator.batches import global_batch, local_batch
from bench.ddp_animator.clock import Clock, instrument
from bench.ddp_animator.distributed import Dist
from bench.ddp_animator.model import StepModule, build_module, wrap
from bench.ddp_animator.report import RESULT_FORMAT, config_info, efficiency, env_info, load_json, model_info, \
    summarise_phases


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict, clock: Clock, sync: bool,
               is_ddp: bool) -> torch.Tensor:
    with clock.span("step"):
        ctx = model.no_sync() if (is_ddp and not sync) else contextlib.nullcontext()
        with ctx:  # forward AND backward inside: DDP decides at forward time whether to reduce
            opt.zero_grad(set_to_none=True)
            with clock.span("forward"):
                loss = model(batch)
            with clock.span("backward"):
                loss.backward()
        with clock.span("optimizer"):
            opt.step()
    return loss.detach()


def _sync(d: Dist) -> None:
    if d.cuda:
        torch.cuda.synchronize()
    d.barrier()


def run_phase(name: str, n: int, first_step: int, *, model, opt, module, d: Dist, args, clock: Clock,
              sync: bool, is_ddp: bool, record: bool) -> tuple[float, list[float]]:
    """n steps starting at global step ``first_step``; returns (wall ms per step, finite losses)."""
    prompts = module.prompt_list
    size = args.batch * d.world
    # Synchronise only here and after the loop (phase boundaries): here so that no work of an earlier
    # phase is still queued when the first step's start event is recorded and all ranks start
    # together; inside the loop the steps run back to back as in training (the events need no sync,
    # and a per-step synchronize would add host round trips and serialise host and GPU work).
    _sync(d)
    t0 = time.perf_counter()
    losses = []
    for i in range(n):
        batch = local_batch(global_batch(first_step + i, prompts, size, args.data_seed), d.rank, args.batch,
                            d.device, not args.no_candidates)
        clock.key = (name, i) if record else None
        losses.append(train_step(model, opt, batch, clock, sync, is_ddp))
        clock.key = None
    if d.cuda:
        torch.cuda.synchronize()  # end of the phase: the host clock covers all queued GPU work
    wall = (time.perf_counter() - t0) * 1000.0 / max(n, 1)
    vals = [float(v) for v in losses]  # after the synchronize: no extra sync inside the loop
    if not all(math.isfinite(v) for v in vals):
        raise RuntimeError(f"non-finite loss in phase {name}: {vals}")
    return wall, vals


def profile_phase(n: int, first_step: int, kw: dict) -> None:
    """n more steps under torch.profiler; rank 0 prints where their time went (bench/profiling.py)."""
    from torch.profiler import profile

    from bench.profiling import activities, print_summary

    args, d = kw["args"], kw["d"]
    with profile(activities=activities(), record_shapes=True) as prof:
        wall, _ = run_phase("profile", n, first_step, sync=True, record=False, **kw)
    if d.rank == 0:
        print_summary(prof, n, wall, f"animator step, {args.batch} videos x {args.frames} frames, {args.res} px")


def bench_allreduce(numel: int, d: Dist, reps: int, warmup: int = 5) -> dict:
    """One all-reduce (sum) of a flat fp32 buffer of ``numel`` elements: median over reps."""
    buf = torch.zeros(numel, dtype=torch.float32, device=d.device)
    for _ in range(warmup):
        dist.all_reduce(buf)
    _sync(d)
    clock = Clock(d.cuda)
    for i in range(reps):
        clock.key = ("allreduce", i)
        with clock.span("step"):
            dist.all_reduce(buf)
    clock.key = None
    times = clock.collect()["allreduce"]["step"]
    per_rank = d.gather(times)
    worst = [max(r[i] for r in per_rank) for i in range(reps)]
    ms = statistics.median(worst)
    nbytes = numel * 4
    k = d.world
    algbw = nbytes / (ms / 1000.0) / 1e9 if ms > 0 else float("nan")
    return {"bytes": nbytes, "numel": numel, "ms_median": ms, "ms_mean": statistics.fmean(worst),
            "algbw_GBps": algbw, "busbw_GBps": algbw * 2 * (k - 1) / k if k > 1 else 0.0, "reps": reps}


def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values),
            "max": max(values), "n": len(values)}

def benchmark(args: argparse.Namespace, d: Dist) -> dict:
    module = build_module(args).to(d.device)
    module.train()
    step_module = StepModule(module)
    model, is_ddp = wrap(step_module, d, args)
    opt = module.configure_optimizers()
    clock = Clock(d.cuda)
    instrument(module, clock)
    weights_bytes = 0
    if d.cuda:
        torch.cuda.synchronize()
        weights_bytes = torch.cuda.memory_allocated(d.device)
        torch.cuda.reset_peak_memory_stats(d.device)
    kw = dict(model=model, opt=opt, module=module, d=d, args=args, clock=clock, is_ddp=is_ddp)
    if args.warmup:
        run_phase("warmup", args.warmup, 0, sync=True, record=False, **kw)
    wall, losses = run_phase("sync", args.steps, args.warmup, sync=True, record=True, **kw)
    timed = clock.collect()["sync"]
    peak = torch.cuda.max_memory_allocated(d.device) if d.cuda else 0
    peak_reserved = torch.cuda.max_memory_reserved(d.device) if d.cuda else 0
    if args.profile:
        profile_phase(args.profile, 20_000, kw)
    nosync = None
    if is_ddp:
        run_phase("nosync-warmup", min(2, args.warmup), 10_000, sync=False, record=False, **kw)
        _, _ = run_phase("nosync", args.steps, 10_000 + args.warmup, sync=False, record=True, **kw)
        nosync = clock.collect()["nosync"]
    grad_numel = sum(p.numel() for p in module.parameters() if p.requires_grad)
    allreduce = bench_allreduce(grad_numel, d, args.allreduce_reps) if d.initialised else None

    gathered = d.gather({"timed": timed, "nosync": nosync, "wall": wall, "peak": peak, "peak_reserved": peak_reserved,
                         "weights": weights_bytes, "loss": losses[-1]})
    per_rank = [g["timed"] for g in gathered]
    step_max = [max(r["step"][i] for r in per_rank) for i in range(args.steps)]
    step = _stats(step_max)
    frames_total = args.batch * d.world * args.frames / (step["median"] / 1000.0)
    res = {
        "format": RESULT_FORMAT, "mode": "benchmark", "world_size": d.world,
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "env": env_info(d), "config": config_info(args, d, is_ddp), "model": model_info(module, args),
        "ops_load_s": d.ops_load_s,
        "step_ms": {**step, "per_rank_median": [statistics.median(r["step"]) for r in per_rank]},
        "wall_ms_per_step": max(g["wall"] for g in gathered),
        "frames_per_s": {"total": frames_total, "per_gpu": frames_total / d.world},
        "videos_per_s": frames_total / args.frames,
        "phases_ms": summarise_phases(per_rank),
        "phases_ms_per_rank": per_rank,
        "memory": {"peak_allocated_GiB": [g["peak"] / 2**30 for g in gathered],
                   "peak_reserved_GiB": [g["peak_reserved"] / 2**30 for g in gathered],
                   "weights_GiB": [g["weights"] / 2**30 for g in gathered]},
        "loss_last_step": [g["loss"] for g in gathered],
        "sync": None, "scaling_efficiency": None, "baseline": None,
    }
    if nosync is not None:
        ns_ranks = [g["nosync"] for g in gathered]
        ns = _stats([max(r["step"][i] for r in ns_ranks) for i in range(args.steps)])
        res["sync"] = {"step_ms_no_sync": ns, "exposed_ms_median": step["median"] - ns["median"],
                       "exposed_ms_mean": step["mean"] - ns["mean"], "allreduce": allreduce,
                       "phases_ms_no_sync": summarise_phases(ns_ranks)}
    elif allreduce is not None:
        res["sync"] = {"allreduce": allreduce}
    if args.baseline_json and d.rank == 0:
        base = load_json(args.baseline_json)
        res["scaling_efficiency"] = efficiency(res, base)
        bc, c = base.get("config", {}), res["config"]
        res["baseline"] = {"path": args.baseline_json, "world_size": base.get("world_size"),
                           "step_ms_median": (base.get("step_ms") or {}).get("median"),
                           "frames_per_s": (base.get("frames_per_s") or {}).get("total")}
        diff = [k for k in ("res", "batch_per_gpu", "frames", "precision", "lpips", "clip_model") if bc.get(k) != c[k]]
        if diff:
            res["baseline"]["mismatch"] = diff
            print(f"warning: the baseline differs in {', '.join(diff)}", file=sys.stderr)
    return res
