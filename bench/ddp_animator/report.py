"""The records of a benchmark result (environment, config, model), the phase summary, and the
tables: one run (``print_table``) or several (``summarize``, --summarize)."""
from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
from typing import Optional

import torch
import torch.nn as nn

from bench.ddp_animator.clock import PHASES
from bench.ddp_animator.distributed import Dist
from src.utils.errors import UserError

RESULT_FORMAT = "lgfa-ddp-animator-bench-1"
#: the anchor of one animator training step (issue #25): the authors' code on one H100, 1024 px config-f,
#: 4 videos x 4 frames, their losses with LPIPS; and the goal set against it
ANCHOR = {"res": 1024, "batch_per_gpu": 4, "frames": 4}
AUTHORS_STEP_MS, AUTHORS_PEAK_GIB = 393.0, 12.2
GOAL_STEP_MS, GOAL_PEAK_GIB = 80.0, 12.0


def anchor_rows(res: dict) -> list[tuple[str, str]]:
    """Ours against the authors' step and the goal, as ratios (below 1: faster, smaller); '-' unless
    the run has the anchor's shape on one process."""
    c = res["config"]
    label = (f"authors' {AUTHORS_STEP_MS:g} ms, {AUTHORS_PEAK_GIB:g} GiB; goal {GOAL_STEP_MS:g} ms, "
             f"{GOAL_PEAK_GIB:g} GiB")
    if res["world_size"] != 1 or any(c.get(k) != v for k, v in ANCHOR.items()):
        return [(f"step ms and peak ÷ anchors ({label})", "- (the anchors: 1024 px, 4 x 4 frames, one GPU)")]
    ms, peak = res["step_ms"]["median"], max(res["memory"]["peak_allocated_GiB"])
    note = "" if c.get("lpips") else " (this run without LPIPS; the authors' step has it)"
    return [(f"step ms ÷ authors' {AUTHORS_STEP_MS:g} / ÷ goal {GOAL_STEP_MS:g}",
             f"{ms / AUTHORS_STEP_MS:.2f} / {ms / GOAL_STEP_MS:.2f}{note}"),
            (f"peak memory ÷ authors' {AUTHORS_PEAK_GIB:g} GiB / ÷ goal {GOAL_PEAK_GIB:g} GiB",
             f"{peak / AUTHORS_PEAK_GIB:.2f} / {peak / GOAL_PEAK_GIB:.2f}")]


def env_info(d: Dist) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "hostname": socket.gethostname(),
            "device": d.device.type, "world_size": d.world, "backend": d.backend if d.initialised else None}
    if d.cuda:
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_name=torch.cuda.get_device_name(d.device),
                    gpu_memory_GiB=torch.cuda.get_device_properties(d.device).total_memory / 2**30,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                    cudnn_benchmark=torch.backends.cudnn.benchmark)
        try:
            v = torch.cuda.nccl.version()
            info["nccl"] = ".".join(str(x) for x in v) if isinstance(v, (tuple, list)) else str(v)
        except Exception:  # noqa: BLE001 - a build without NCCL
            info["nccl"] = None
    else:
        info.update(cpu_threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine())
    return info


def device_name(env: dict) -> str:
    """The GPU a result ran on (rank 0's name), or the device type ('cpu') of a CPU run."""
    return env.get("gpu_name") or env.get("device") or "?"


def model_info(module: nn.Module, args: argparse.Namespace) -> dict:
    n = lambda m: sum(p.numel() for p in m.parameters()) if m is not None else 0  # noqa: E731
    trainable = [p for p in module.parameters() if p.requires_grad]
    return {"generator_params": n(module.generator), "clip_params": n(module.clip),
            "loss_clip_params": n(module.loss_clip) if module.loss_clip is not module.clip else 0,
            "lpips_params": n(module.perceptual), "num_ws": int(module.generator.num_ws),
            "trainable_params": sum(p.numel() for p in trainable), "trainable_tensors": len(trainable),
            "buffer_bytes": sum(b.numel() * b.element_size() for b in module.buffers()),
            "prompts": len(module.prompt_list), "loss_weights": dict(module.loss_cfg)}


def config_info(args: argparse.Namespace, d: Dist, is_ddp: bool) -> dict:
    return {"res": args.res, "batch_per_gpu": args.batch, "global_batch": args.batch * d.world,
            "frames": args.frames, "steps": args.steps, "warmup": args.warmup,
            "precision": "fp32" if args.fp32 else ("fp16 top 4 res (conv_clamp 256)" if d.cuda
                                                   else "fp16 top 4 res requested; fp32 on CPU"),
            "lpips": not args.no_lpips, "clip_model": "tiny" if args.tiny else args.clip_model,
            "generator_checkpoint_res": args.checkpoint_res, "generator_channels_last": not args.nchw,
            "input_clip_model": ("tiny (separate)" if args.tiny and args.input_clip_model != "same"
                                 else args.input_clip_model), "text_lr": args.text_lr, "tiny": args.tiny,
            "ddp": is_ddp, "broadcast_buffers": bool(args.broadcast_buffers), "bucket_cap_mb": args.bucket_cap_mb,
            "candidates": not args.no_candidates, "ops_impl": args.ops_impl if d.cuda else "ref",
            "seed": args.seed, "data_seed": args.data_seed, "clip_views": 0}


def summarise_phases(per_rank: list[dict[str, list[float]]]) -> dict:
    """Mean over ranks and steps of every phase (additive: the parts sum to the step mean) and the
    median over steps of the per-step mean over ranks."""
    out = {}
    steps = len(per_rank[0]["step"])
    for name in PHASES:
        per_step = [statistics.fmean(r[name][i] for r in per_rank) for i in range(steps)]
        out[name] = {"mean": statistics.fmean(per_step), "median": statistics.median(per_step)}
    fwd_parts = ("generator", "clip_loss", "clip_input")
    rest = [statistics.fmean(r["forward"][i] - sum(r[p][i] for p in fwd_parts) for r in per_rank)
            for i in range(steps)]
    other = [statistics.fmean(r["step"][i] - r["forward"][i] - r["backward"][i] - r["optimizer"][i]
                              for r in per_rank) for i in range(steps)]
    out["rest_forward"] = {"mean": statistics.fmean(rest), "median": statistics.median(rest)}
    out["other"] = {"mean": statistics.fmean(other), "median": statistics.median(other)}
    return out


def load_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def efficiency(result: dict, base: dict) -> Optional[float]:
    try:
        k, k0 = result["world_size"], base["world_size"]
        f, f0 = result["frames_per_s"]["total"], base["frames_per_s"]["total"]
    except (KeyError, TypeError):
        return None
    return f / (k * f0 / k0) if f0 > 0 else None


def print_table(res: dict) -> None:
    c, ph, s = res["config"], res["phases_ms"], res.get("sync") or {}
    fmt = lambda x, n=2: "-" if x is None else f"{x:.{n}f}"  # noqa: E731
    rows = [
        ("GPUs / processes (K)", str(res["world_size"])),
        ("device", device_name(res["env"])),
        ("resolution / precision", f"{c['res']} / {c['precision']}"),
        ("generator blocks recomputed in the backward", f">= {c['generator_checkpoint_res']} px"
         if c.get("generator_checkpoint_res") else "none"),
        ("generator's fp16 blocks channels-last", str(bool(c.get("generator_channels_last")))),
        ("videos per GPU x frames", f"{c['batch_per_gpu']} x {c['frames']} (global batch {c['global_batch']})"),
        ("LPIPS / loss CLIP / input CLIP", f"{c['lpips']} / {c['clip_model']} / {c['input_clip_model']}"),
        ("DDP", f"{c['ddp']} (broadcast_buffers {c['broadcast_buffers']}, bucket {c['bucket_cap_mb']} MB)"),
        ("step ms (median / mean; max over ranks)", f"{fmt(res['step_ms']['median'])} / {fmt(res['step_ms']['mean'])}"),
        ("wall ms per step (host clock)", fmt(res["wall_ms_per_step"])),
        ("frames/s total / per GPU",
         f"{fmt(res['frames_per_s']['total'], 1)} / {fmt(res['frames_per_s']['per_gpu'], 1)}"),
        ("scaling efficiency vs K=1", fmt(res.get("scaling_efficiency"), 3)),
        ("generator forward ms", fmt(ph["generator"]["mean"])),
        ("loss-CLIP forward ms", fmt(ph["clip_loss"]["mean"])),
        ("input-CLIP forward ms (no grad)", fmt(ph["clip_input"]["mean"])),
        ("rest of forward ms (text, animator, LPIPS, losses)", fmt(ph["rest_forward"]["mean"])),
        ("backward ms (incl. non-overlapped all-reduce)", fmt(ph["backward"]["mean"])),
        ("optimizer ms", fmt(ph["optimizer"]["mean"])),
        ("other ms (zero_grad, gaps)", fmt(ph["other"]["mean"])),
        ("step ms under no_sync (median)", fmt((s.get("step_ms_no_sync") or {}).get("median"))),
        ("exposed gradient sync ms (median diff)", fmt(s.get("exposed_ms_median"))),
        ("raw all-reduce ms / MB", "-" if not s.get("allreduce") else
         f"{fmt(s['allreduce']['ms_median'], 3)} / {s['allreduce']['bytes'] / 1e6:.1f}"),
        ("trainable params", f"{res['model']['trainable_params']:,}"),
        ("peak memory GiB per rank", ", ".join(fmt(x) for x in res["memory"]["peak_allocated_GiB"])),
        *anchor_rows(res),
    ]
    print("| metric | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print("(phase rows: mean over timed steps and ranks; they add up to the mean step time)")


def summarize(paths: list[str]) -> int:
    runs = [load_json(p) for p in paths]
    runs = [r for r in runs if r.get("format") == RESULT_FORMAT]
    if not runs:
        raise UserError("no benchmark result among the given JSONs")
    base = {}
    for r in runs:
        c = r["config"]
        key = (c["res"], c["batch_per_gpu"], c["frames"], c["precision"], c["lpips"])
        if r["world_size"] == 1 and key not in base:
            base[key] = r
    print("| K | res | B/GPU | step ms (median) | frames/s | frames/s/GPU | efficiency | gen fwd | CLIP fwd | "
          "rest fwd | backward | optim | exposed sync | all-reduce ms (MB) | peak GiB | device |")
    print("|" + "---|" * 16)
    for r in sorted(runs, key=lambda r: (r["config"]["res"], r["world_size"])):
        c, ph, s = r["config"], r["phases_ms"], r.get("sync") or {}
        key = (c["res"], c["batch_per_gpu"], c["frames"], c["precision"], c["lpips"])
        eff = efficiency(r, base[key]) if key in base else r.get("scaling_efficiency")
        ar = s.get("allreduce")
        eff_s = "-" if eff is None else f"{eff:.3f}"
        exposed = s.get("exposed_ms_median")
        exp_s = "-" if exposed is None else f"{exposed:.2f}"
        ar_s = "-" if not ar else f"{ar['ms_median']:.3f} ({ar['bytes'] / 1e6:.1f})"
        print(f"| {r['world_size']} | {c['res']} | {c['batch_per_gpu']} | {r['step_ms']['median']:.1f} | "
              f"{r['frames_per_s']['total']:.1f} | {r['frames_per_s']['per_gpu']:.1f} | {eff_s} | "
              f"{ph['generator']['mean']:.1f} | {ph['clip_loss']['mean']:.1f} | {ph['rest_forward']['mean']:.1f} | "
              f"{ph['backward']['mean']:.1f} | {ph['optimizer']['mean']:.1f} | {exp_s} | {ar_s} | "
              f"{max(r['memory']['peak_allocated_GiB']):.2f} | {device_name(r.get('env') or {})} |")
    return 0
