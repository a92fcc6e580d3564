"""Rank/world from torchrun's environment, the process group, the device choice and the
deterministic mode of --check-equivalence."""
from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any, Optional

import torch
import torch.distributed as dist

from src.utils.errors import UserError


class Dist:
    """Rank/world from torchrun's environment (a plain process is rank 0 of 1)."""

    def __init__(self, device_kind: str):
        self.rank = int(os.environ.get("RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.cuda = device_kind == "cuda"
        if self.cuda:
            n = torch.cuda.device_count()
            if self.local_rank >= n:
                raise UserError(f"rank {self.rank} needs GPU {self.local_rank} but only {n} are visible "
                                f"(nproc_per_node > number of GPUs)")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.backend = "nccl" if self.cuda else "gloo"
        self.initialised = False
        self.ops_load_s: Optional[float] = None  # seconds to build/load the CUDA ops (setup)

    def init(self, force: bool) -> None:
        """Start the process group when there are several ranks (or DDP is forced on one)."""
        if self.world == 1 and not force:
            return
        timeout = datetime.timedelta(minutes=10)
        if "MASTER_ADDR" in os.environ:
            kw = dict(device_id=self.device) if self.cuda else {}
            dist.init_process_group(self.backend, timeout=timeout, **kw)
        else:  # a plain process with --force-ddp: a one-rank group on an in-memory store
            dist.init_process_group(self.backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        self.initialised = True

    def barrier(self) -> None:
        if self.initialised:
            if self.cuda:
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if not self.initialised:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.initialised and dist.is_initialized():
            dist.destroy_process_group()
            self.initialised = False


def pick_device(choice: str) -> str:
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is visible (use --device cpu, e.g. with --tiny)")
    return choice


def set_deterministic() -> None:
    """Reproducible kernels for --check-equivalence (CUBLAS_WORKSPACE_CONFIG is set in main, before CUDA)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def setup(args: argparse.Namespace) -> tuple[Dist, Any]:
    device = pick_device(args.device)
    d = Dist(device)
    if d.cuda:
        torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
        import src.ops

        src.ops.configure(impl=args.ops_impl, on_build_failure="error")
        if args.ops_impl != "ref":
            # build/load the CUDA ops before any collective: the ranks queue on the build lock
            # (first use builds with ninja for 1-2 min) instead of timing out in a collective
            from src.ops.build import get_plugin

            t0 = time.perf_counter()
            get_plugin()
            d.ops_load_s = time.perf_counter() - t0
    elif d.world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(d.local_world, 1)))
    d.init(args.force_ddp)
    return d, device
