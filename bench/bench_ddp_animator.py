"""Multi-GPU (DDP) scaling benchmark and equivalence check of ONE animator training step.

    torchrun --standalone --nproc_per_node=K bench/bench_ddp_animator.py [--res 1024] [--batch 4]
        [--steps 20] [--warmup 5] [--fp32] [--no-lpips] [--json OUT] [--baseline-json K1.json]
    python bench/bench_ddp_animator.py --tiny --device cpu --steps 2 --warmup 1 --no-lpips   # smoke test

    # equivalence of K ranks x batch B with 1 rank x batch K*B (weights after N Adam steps):
    python   bench/bench_ddp_animator.py --check-equivalence 10 --batch 8 --save-weights k1.safetensors
    torchrun --standalone --nproc_per_node=2 bench/bench_ddp_animator.py --check-equivalence 10 --batch 4 \
        --save-weights k2.safetensors
    python bench/bench_ddp_animator.py --compare k1.safetensors k2.safetensors
    python bench/bench_ddp_animator.py --summarize k1.json k2.json        # one table of several runs

The step is the paper's (src/systems/animator.py ``AnimatorModule.compute_losses``): a frozen
StyleGAN2-ADA config-f generator (random weights; 1024 px, fp16 in the top 4 resolutions, conv clamp
256 unless --fp32; CUDA ops), a ViT-B/32-sized CLIP with random weights for the loss (and, by
default, the same instance for the animator's inputs; ``--input-clip-model RN50`` gives the human
domain's separate RN50 input encoder), LPIPS-Alex at 224 px (weights from $LGFA_LPIPS_DIR), the
prompts of conf/domain/human.yaml and the loss weights of conf/loss/paper.yaml, train_frames 4,
B videos per GPU (paper: 4), Adam of ``configure_optimizers``. Only the animator's parameters
require grad; they are wrapped in torch DDP as Lightning's ``strategy=ddp`` does (defaults:
broadcast_buffers=True, 25 MB buckets, find_unused_parameters=False). With one process the step
runs without DDP, as Lightning's single-device strategy does (``--force-ddp`` wraps it anyway).

Batches: the GLOBAL batch (B*K distinct prompts while B*K <= the 28 prompts, else repeats with
every rank's slice still distinct; one latent seed per sample) is a pure function of the step
index and --data-seed, built identically on every rank; rank r takes samples [r*B, (r+1)*B). The
distinct prompts of the global batch go along as ``candidates`` (the contrastive negatives of a
DDP-exact loss; a module that does not know the key ignores it; --no-candidates leaves it out).

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

Equivalence (--check-equivalence N): deterministic algorithms (warn_only), cuDNN deterministic,
TF32 off, CUBLAS_WORKSPACE_CONFIG=:4096:8, the same model seed on every rank; runs N Adam steps
and writes (rank 0) the trainable weights before and after and the step-1 gradient (after the DDP
average) to --save-weights (safetensors). --compare A B prints their differences (init, step-1
gradient, final weights, losses) and says EQUIVALENT when the inits are identical and the step-1
gradient and the loss curve agree within --grad-tol / --loss-tol (exit code 1 otherwise). The
final weights are reported but not judged: Adam with betas (0, 0.999) normalises every gradient
element by its own RMS, so rounding noise on elements whose gradient is ~0 becomes steps of about
+-lr there (seen on CPU: a 5e-10 gradient element ending 5.7e-3 apart after 3 steps).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import inspect
import json
import math
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402

from src.data.prompts import distinct_in_order  # noqa: E402
from src.utils.errors import UserError  # noqa: E402

RESULT_FORMAT = "lgfa-ddp-animator-bench-1"
WEIGHTS_FORMAT = "lgfa-ddp-equivalence-1"
PHASES = ("generator", "clip_loss", "clip_input", "forward", "backward", "optimizer", "step")

# --tiny: a CLIP small enough for CPU smoke tests (open_clip's CLIP class, random weights).
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


# ====================================================================================== arguments
def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--res", type=int, default=None, help="generator resolution (default 1024; --tiny: 64)")
    ap.add_argument("--batch", type=int, default=4, help="videos per GPU (paper: 4)")
    ap.add_argument("--frames", type=int, default=4, help="train_frames (paper: 4)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps (also the number of no_sync steps)")
    ap.add_argument("--warmup", type=int, default=5, help="warm-up steps before timing")
    ap.add_argument("--fp32", action="store_true", help="no fp16 layers in the generator (default: top 4 in fp16)")
    ap.add_argument("--no-lpips", action="store_true", help="LPIPS loss weight 0 (no LPIPS network)")
    ap.add_argument("--lpips-dir", default=None, help="LPIPS weights folder (default $LGFA_LPIPS_DIR)")
    ap.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture of the loss CLIP (random init)")
    ap.add_argument("--input-clip-model", default="same",
                    help="CLIP of the animator's inputs: 'same' (one shared instance) or an open_clip name (human "
                         "domain: RN50)")
    ap.add_argument("--text-lr", type=float, default=0.0,
                    help="fine-tune the input CLIP's text tower at this lr (experiment human_paper: 1e-5); 0: frozen")
    ap.add_argument("--hidden", type=int, default=None, help="animator hidden size (default 384; --tiny: 32)")
    ap.add_argument("--tiny", action="store_true", help="64 px generator (channel_max 32) + tiny CLIP, for CPU tests")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--ops-impl", choices=("cuda", "ref", "auto"), default="cuda",
                    help="StyleGAN2 custom ops on GPU (CPU always uses ref)")
    ap.add_argument("--force-ddp", action="store_true", help="wrap in DDP also with a single process")
    ap.add_argument("--broadcast-buffers", type=int, choices=(0, 1), default=1,
                    help="DDP broadcast_buffers (1 = torch/Lightning default)")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="DDP bucket size (25 = default)")
    ap.add_argument("--cudnn-benchmark", action="store_true")
    ap.add_argument("--no-candidates", action="store_true", help="do not pass batch['candidates']")
    ap.add_argument("--seed", type=int, default=0, help="model init seed (the same on every rank)")
    ap.add_argument("--data-seed", type=int, default=1234, help="seed of the global batches")
    ap.add_argument("--allreduce-reps", type=int, default=20)
    ap.add_argument("--json", default=None, help="rank 0 writes the results here")
    ap.add_argument("--baseline-json", default=None, help="JSON of the K=1 run: scaling efficiency")
    ap.add_argument("--check-equivalence", type=int, default=0, metavar="N",
                    help="run N deterministic Adam steps and save the weights (--save-weights) instead of timing")
    ap.add_argument("--save-weights", default=None, help="safetensors file of --check-equivalence (rank 0)")
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                    help="compare two --save-weights files (no torchrun)")
    ap.add_argument("--grad-tol", type=float, default=1e-3, help="--compare: max ||gA-gB||/||gA|| of step 1")
    ap.add_argument("--loss-tol", type=float, default=1e-3, help="--compare: max relative loss difference")
    ap.add_argument("--weight-tol", type=float, default=1e-2,
                    help="--compare: ||A-B||/||A-init|| above this is noted (diagnostic, not part of the verdict)")
    ap.add_argument("--summarize", nargs="+", metavar="JSON", default=None, help="one table of several result JSONs")
    args = ap.parse_args(argv)
    if args.res is None:
        args.res = 64 if args.tiny else 1024
    if args.hidden is None:
        args.hidden = 32 if args.tiny else 384
    for name in ("batch", "frames"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1")
    if args.frames < 2:
        raise UserError("--frames must be >= 2")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be >= 1 and --warmup >= 0")
    if args.check_equivalence < 0:
        raise UserError("--check-equivalence N needs N >= 1")
    if args.check_equivalence and not args.save_weights:
        raise UserError("--check-equivalence needs --save-weights PATH")
    return args


# ====================================================================================== distributed
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


# ====================================================================================== the model
def paper_settings() -> tuple[dict, dict]:
    """(prompts node, perceptual kind + generator sampling) of conf/domain/human.yaml and conf/loss/paper.yaml."""
    from omegaconf import OmegaConf

    dom = OmegaConf.load(ROOT / "conf" / "domain" / "human.yaml")
    loss = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "loss" / "paper.yaml"), resolve=True)
    domain = {
        "prompts": {"template": str(dom.prompts.template), "concepts": [str(c) for c in dom.prompts.concepts]},
        "perceptual": str(dom.perceptual),
        "truncation_psi": float(dom.generator.truncation_psi),
        "noise_mode": str(dom.generator.noise_mode),
    }
    return domain, {k: float(v) for k, v in loss.items()}


def make_generator(args: argparse.Namespace) -> nn.Module:
    """StyleGAN2-ADA config-f (channel_base 32768, channel_max 512, 8 mapping layers, z/w 512) or the tiny one."""
    from src.stylegan import Generator

    fp16 = not args.fp32
    syn = dict(channel_base=32768, channel_max=32 if args.tiny else 512, num_fp16_res=4 if fp16 else 0,
               conv_clamp=256 if fp16 else None)
    zw = 64 if args.tiny else 512
    return Generator(z_dim=zw, c_dim=0, w_dim=zw, img_resolution=args.res, img_channels=3,
                     mapping_kwargs=dict(num_layers=2 if args.tiny else 8), synthesis_kwargs=syn).eval()


def make_clip(name: str, tiny: bool) -> nn.Module:
    """A randomly initialised open_clip model wrapped as ClipEncoder.from_config wraps a loaded one."""
    import logging

    import open_clip

    from src.networks.clip_encoder import CLIP_MEAN, CLIP_STD, ClipEncoder

    if tiny:
        from open_clip.model import CLIP

        model = CLIP(**TINY_CLIP_CFG).eval()
        return ClipEncoder(model, kind="open_clip", mean=CLIP_MEAN, std=CLIP_STD, source="open_clip:tiny:random")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns that the weights are random: that is the point here
    try:
        model = open_clip.create_model(name, pretrained=None)
    except Exception as e:  # unknown architecture name: one line
        raise UserError(f"open_clip cannot build '{name}': {str(e).strip().splitlines()[0] if str(e).strip() else e}") \
            from None
    finally:
        root.setLevel(level)
    return ClipEncoder.wrap_open_clip(model, open_clip.get_tokenizer(name), source=f"open_clip:{name}:random")


def build_module(args: argparse.Namespace):
    """The AnimatorModule with in-code frozen networks; identical on every rank (fixed seeds)."""
    from src.systems.animator import AnimatorModule

    dom, loss = paper_settings()
    n_prompts = len(dom["prompts"]["concepts"])
    if args.batch > n_prompts:
        raise UserError(f"--batch {args.batch} exceeds the {n_prompts} distinct prompts (the contrastive loss "
                        "needs distinct prompts in a per-GPU batch)")
    if args.no_lpips:
        loss["lpips"] = 0.0
    shared = args.input_clip_model == "same"
    loss_name = "tiny" if args.tiny else args.clip_model
    input_name = loss_name if shared else ("tiny-input" if args.tiny else args.input_clip_model)
    torch.manual_seed(args.seed)
    generator = make_generator(args)
    torch.manual_seed(args.seed + 1)
    loss_enc = make_clip(args.clip_model, args.tiny)
    if shared:
        input_enc = loss_enc
        # a fine-tuned text tower cannot serve the loss: the module needs a separate frozen copy
        loss_arg = copy.deepcopy(loss_enc) if args.text_lr > 0 else None
    else:
        torch.manual_seed(args.seed + 2)
        input_enc = make_clip(args.input_clip_model, args.tiny)
        loss_arg = loss_enc
    def clip_node(name: str) -> dict:
        return {"kind": "module", "model_name": name, "pretrained": None, "checkpoint": None}

    domain = {
        "name": "human-bench", "resolution": args.res,
        "generator": {"checkpoint": None, "truncation_psi": dom["truncation_psi"], "noise_mode": dom["noise_mode"]},
        "clip": clip_node(input_name), "loss_clip": clip_node(loss_name),
        "prompts": dom["prompts"], "identity_metric": "none", "perceptual": dom["perceptual"],
    }
    lpips_dir = args.lpips_dir or None  # None: the module's default, $LGFA_LPIPS_DIR or ~/.cache/lgfa/lpips
    torch.manual_seed(args.seed + 3)
    try:
        module = AnimatorModule(domain=domain, loss=loss, net={"hidden": args.hidden, "variant": "ours"},
                                train={"frames": args.frames, "text_lr": args.text_lr, "clip_views": 0,
                                       "lpips_size": 64 if args.tiny else 224, "lpips_path": lpips_dir},
                                validation={"video_every_n_steps": 0}, hash_check="off",
                                generator=generator, clip=input_enc, loss_clip=loss_arg)
    except UserError as e:
        if "LPIPS" in str(e):
            raise UserError(f"{e}; set LGFA_LPIPS_DIR / --lpips-dir or pass --no-lpips") from None
        raise
    return module


class StepModule(nn.Module):
    """What DDP wraps: forward(batch) -> the total loss of ``compute_losses``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch: dict) -> torch.Tensor:
        return self.module.compute_losses(batch)[0]


def wrap(step_module: nn.Module, d: Dist, args: argparse.Namespace) -> tuple[nn.Module, bool]:
    if not d.initialised:
        return step_module, False
    from torch.nn.parallel import DistributedDataParallel as DDP

    kw: dict[str, Any] = {}
    if not args.broadcast_buffers:  # the default (True) is what Lightning's strategy=ddp uses
        # newer torch renames the per-forward buffer broadcast to forward_sync_buffers
        params = inspect.signature(DDP.__init__).parameters
        kw["forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"] = False
    ddp = DDP(step_module, device_ids=[d.local_rank] if d.cuda else None, bucket_cap_mb=args.bucket_cap_mb,
              find_unused_parameters=False, **kw)
    return ddp, True


# ====================================================================================== batches
def global_batch(step: int, prompts: list[str], size: int, data_seed: int) -> dict:
    """The global batch of ``step``: a pure function of (step, size, data_seed), equal on all ranks.

    Prompt j of the batch is perm[j mod P] for a random permutation of the P prompts, so every run
    of <= P consecutive samples (a rank's slice) is distinct, also when size > P (repeats).
    """
    g = torch.Generator().manual_seed(data_seed * 1_000_003 + step)
    perm = torch.randperm(len(prompts), generator=g)
    concept = torch.stack([perm[j % len(prompts)] for j in range(size)])
    seed = torch.randint(0, 2**31 - 1, (size,), generator=g)
    return dict(caption=[prompts[int(c)] for c in concept], concept=concept, seed=seed)


def local_batch(gb: dict, rank: int, batch: int, device: torch.device, candidates: bool) -> dict:
    lo, hi = rank * batch, (rank + 1) * batch
    # seeds stay on the CPU: they only seed CPU generators (as under Lightning, see the docstring)
    out = dict(caption=gb["caption"][lo:hi], concept=gb["concept"][lo:hi].to(device), seed=gb["seed"][lo:hi])
    if candidates:
        out["candidates"] = distinct_in_order(gb["caption"])
    return out


# ====================================================================================== timing
class Clock:
    """Named intervals per (phase, step): CUDA events on the current stream, or perf_counter on CPU.

    Nothing is synchronised while recording; ``collect`` synchronises once and sums the intervals
    of each name within a step (the generator runs twice per step: input face and frames).
    """

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.key: Optional[tuple[str, int]] = None  # (phase, step) while recording
        self.records: list[tuple[tuple[str, int], str, Any, Any]] = []
        self._open: dict[str, list[tuple[tuple[str, int], Any]]] = {}

    def _now(self) -> Any:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def start(self, name: str) -> None:
        if self.key is not None:
            self._open.setdefault(name, []).append((self.key, self._now()))

    def stop(self, name: str) -> None:
        stack = self._open.get(name)
        if stack:
            key, begin = stack.pop()
            self.records.append((key, name, begin, self._now()))

    @contextlib.contextmanager
    def span(self, name: str):
        self.start(name)
        try:
            yield
        finally:
            self.stop(name)

    def collect(self) -> dict[str, dict[str, list[float]]]:
        """{phase: {name: [ms per step]}} (0 where a name did not occur in a step); clears the records."""
        if self.cuda:
            torch.cuda.synchronize()
        acc: dict[str, dict[str, dict[int, float]]] = {}
        steps: dict[str, set[int]] = {}
        for (phase, step), name, begin, end in self.records:
            ms = begin.elapsed_time(end) if self.cuda else (end - begin) * 1000.0
            slot = acc.setdefault(phase, {}).setdefault(name, {})
            slot[step] = slot.get(step, 0.0) + ms
            steps.setdefault(phase, set()).add(step)
        self.records, self._open = [], {}
        return {phase: {name: [acc[phase].get(name, {}).get(s, 0.0) for s in sorted(steps[phase])]
                        for name in PHASES} for phase in acc}


def instrument(module: nn.Module, clock: Clock) -> None:
    """Time the generator (mapping + synthesis forward hooks) and the CLIPs' encode_image."""
    for sub in (module.generator.mapping, module.generator.synthesis):
        sub.register_forward_pre_hook(lambda m, a: clock.start("generator"))
        sub.register_forward_hook(lambda m, a, o: clock.stop("generator"))
    seen = set()
    for enc in (module.clip, module.loss_clip):
        if enc is None or id(enc) in seen:
            continue
        seen.add(id(enc))
        original = enc.encode_image

        def timed(img, _original=original):
            # the loss CLIP runs with grad (it back-propagates into the last frame); the
            # animator's input encoder runs under no_grad
            with clock.span("clip_loss" if torch.is_grad_enabled() else "clip_input"):
                return _original(img)

        enc.encode_image = timed  # instance attribute: shadows the method for this object only


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


# ====================================================================================== reports
def _stats(values: list[float]) -> dict:
    return {"median": statistics.median(values), "mean": statistics.fmean(values), "min": min(values),
            "max": max(values), "n": len(values)}


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
        ("device", res["env"].get("gpu_name") or res["env"]["device"]),
        ("resolution / precision", f"{c['res']} / {c['precision']}"),
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
          "rest fwd | backward | optim | exposed sync | all-reduce ms (MB) | peak GiB |")
    print("|" + "---|" * 15)
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
              f"{max(r['memory']['peak_allocated_GiB']):.2f} |")
    return 0


# ====================================================================================== main paths
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


def check_equivalence(args: argparse.Namespace, d: Dist) -> dict:
    set_deterministic()
    module = build_module(args).to(d.device)
    module.train()
    model, is_ddp = wrap(StepModule(module), d, args)
    opt = module.configure_optimizers()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = dict(module.named_parameters())
    init = {k: v.detach().cpu().clone() for k, v in module.trainable_state_dict().items()}
    size = args.batch * d.world
    grad1, losses = {}, []
    for s in range(args.check_equivalence):
        batch = local_batch(global_batch(s, module.prompt_list, size, args.data_seed), d.rank, args.batch, d.device,
                            not args.no_candidates)
        opt.zero_grad(set_to_none=True)
        loss = model(batch)
        loss.backward()
        if s == 0:  # the gradient that Adam sees (after DDP's average over ranks)
            grad1 = {n: params[n].grad.detach().cpu().clone() for n in names}
        opt.step()
        mean = loss.detach().clone()
        if d.initialised:
            dist.all_reduce(mean)
            mean /= d.world
        losses.append(float(mean))
    final = {k: v.detach().cpu().clone() for k, v in module.trainable_state_dict().items()}
    # the DDP replicas must agree with each other (they start equal and apply equal updates)
    flat = torch.cat([v.reshape(-1).float() for v in final.values()]).to(d.device)
    spread = 0.0
    if d.initialised:
        ref = flat.clone()
        dist.broadcast(ref, 0)
        diff = (flat - ref).abs().max()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        spread = float(diff)
    meta = {"format": WEIGHTS_FORMAT, "world_size": d.world, "batch_per_rank": args.batch, "global_batch": size,
            "steps": args.check_equivalence, "losses": losses, "rank_spread_max_abs": spread,
            "env": env_info(d), "config": config_info(args, d, is_ddp)}
    if d.rank == 0:
        from safetensors.torch import save_file

        tensors = {}
        for prefix, group in (("init", init), ("final", final), ("grad1", grad1)):
            for k, v in group.items():
                tensors[f"{prefix}/{k}"] = v.contiguous()
        Path(args.save_weights).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, args.save_weights, metadata={"meta": json.dumps(meta)})
        print(f"K={d.world} x batch {args.batch}: {args.check_equivalence} Adam steps, losses "
              f"{', '.join(f'{x:.5f}' for x in losses)}; replicas differ by {spread:.3g}; wrote {args.save_weights}")
    return meta


def read_weights(path: str) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("meta", "{}"))
            groups: dict[str, dict[str, torch.Tensor]] = {"init": {}, "final": {}, "grad1": {}}
            for key in f.keys():
                prefix, name = key.split("/", 1)
                groups.setdefault(prefix, {})[name] = f.get_tensor(key).double()
    except Exception as e:  # noqa: BLE001 - missing / not safetensors: one line
        raise UserError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if meta.get("format") != WEIGHTS_FORMAT:
        raise UserError(f"{path}: not a --save-weights file of this script")
    return meta, groups


def _diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    """max |a-b|, per-tensor relative max (max|a-b| / max|a|, worst tensor) and the global norms."""
    max_abs, max_rel, d2, a2 = 0.0, 0.0, 0.0, 0.0
    for k in a:
        da = (a[k] - b[k]).abs()
        scale = float(a[k].abs().max()) if a[k].numel() else 0.0
        m = float(da.max()) if da.numel() else 0.0
        max_abs = max(max_abs, m)
        if scale > 0:
            max_rel = max(max_rel, m / scale)
        d2 += float((da ** 2).sum())
        a2 += float((a[k] ** 2).sum())
    return {"max_abs": max_abs, "max_rel": max_rel, "norm_diff": math.sqrt(d2), "norm_a": math.sqrt(a2)}


def compare(path_a: str, path_b: str, args: argparse.Namespace) -> int:
    meta_a, a = read_weights(path_a)
    meta_b, b = read_weights(path_b)
    if set(a["final"]) != set(b["final"]) or any(a["final"][k].shape != b["final"][k].shape for k in a["final"]):
        raise UserError("the two files hold different trainable tensors (different configs?)")
    if meta_a.get("global_batch") != meta_b.get("global_batch") or meta_a.get("steps") != meta_b.get("steps"):
        print(f"warning: global batch {meta_a.get('global_batch')} vs {meta_b.get('global_batch')}, steps "
              f"{meta_a.get('steps')} vs {meta_b.get('steps')}: not the same training", file=sys.stderr)
    init = _diff(a["init"], b["init"])
    grad = _diff(a["grad1"], b["grad1"])
    dot = sum(float((a["grad1"][k] * b["grad1"][k]).sum()) for k in a["grad1"])
    nb = math.sqrt(sum(float((v ** 2).sum()) for v in b["grad1"].values()))
    grad["cosine"] = dot / (grad["norm_a"] * nb) if grad["norm_a"] > 0 and nb > 0 else float("nan")
    grad["rel_norm"] = grad["norm_diff"] / grad["norm_a"] if grad["norm_a"] > 0 else float("nan")
    fin = _diff(a["final"], b["final"])
    moved = _diff(a["final"], a["init"])["norm_diff"]
    fin["rel_to_update"] = fin["norm_diff"] / moved if moved > 0 else float("nan")
    worst = []
    for k in a["final"]:
        dk = float((a["final"][k] - b["final"][k]).norm())
        mk = float((a["final"][k] - a["init"][k]).norm())
        worst.append((dk / mk if mk > 0 else float("inf") if dk > 0 else 0.0, k, dk))
    worst.sort(reverse=True)
    desc = lambda m: f"K={m.get('world_size')} x batch {m.get('batch_per_rank')}"  # noqa: E731
    print(f"A: {path_a} ({desc(meta_a)}), B: {path_b} ({desc(meta_b)}); {meta_a.get('steps')} Adam steps, "
          f"global batch {meta_a.get('global_batch')}")
    print(f"losses A: {', '.join(f'{x:.5f}' for x in meta_a.get('losses', []))}")
    print(f"losses B: {', '.join(f'{x:.5f}' for x in meta_b.get('losses', []))}")
    print(f"replica spread inside A / B (max |rank r - rank 0|): {meta_a.get('rank_spread_max_abs')} / "
          f"{meta_b.get('rank_spread_max_abs')}")
    print("| quantity | max abs diff | max rel diff (per tensor, max|A-B|/max|A|) | ||A-B|| / reference |")
    print("|---|---|---|---|")
    print(f"| init weights | {init['max_abs']:.3e} | {init['max_rel']:.3e} | - |")
    print(f"| step-1 gradient | {grad['max_abs']:.3e} | {grad['max_rel']:.3e} | {grad['rel_norm']:.3e} "
          f"(ref ||gA||; cosine {grad['cosine']:.6f}) |")
    print(f"| final weights | {fin['max_abs']:.3e} | {fin['max_rel']:.3e} | {fin['rel_to_update']:.3e} "
          f"(ref ||A - init||) |")
    print("worst tensors by ||A-B|| / ||A-init||: " + "; ".join(f"{k} {r:.3e}" for r, k, _ in worst[:5]))
    la, lb = meta_a.get("losses", []), meta_b.get("losses", [])
    loss_rel = max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(la, lb)), default=float("nan"))
    if len(la) != len(lb) or not la:
        loss_rel = float("inf")
    print(f"max relative loss difference over the steps: {loss_rel:.3e}")
    # The verdict rests on the step-1 gradient (same weights, same data: it must agree up to float
    # rounding) and on the loss curve. The final weights are a diagnostic only: Adam (betas 0, 0.999)
    # divides every gradient element by its own RMS, so rounding noise on an element whose gradient is
    # ~0 becomes a step of about +-lr there, and such flips accumulate over the steps.
    ok = init["max_abs"] == 0 and grad["rel_norm"] <= args.grad_tol and loss_rel <= args.loss_tol
    verdict = "EQUIVALENT" if ok else "NOT EQUIVALENT"
    print(f"{verdict} (init identical: {init['max_abs'] == 0}; step-1 gradient {grad['rel_norm']:.2e} <= "
          f"{args.grad_tol:g}: {grad['rel_norm'] <= args.grad_tol}; losses {loss_rel:.2e} <= {args.loss_tol:g}: "
          f"{loss_rel <= args.loss_tol})")
    if ok and fin["rel_to_update"] > args.weight_tol:
        print(f"note: the final weights differ by {fin['rel_to_update']:.2e} of the update (> {args.weight_tol:g}); "
              "Adam turns rounding noise on near-zero gradient elements into +-lr steps, so this alone does not "
              "mean the gradients differ (see the step-1 gradient row)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"a": path_a, "b": path_b, "meta_a": {k: v for k, v in meta_a.items() if k != "env"},
                       "meta_b": {k: v for k, v in meta_b.items() if k != "env"}, "init": init, "grad1": grad,
                       "final": fin, "loss_max_rel_diff": loss_rel, "worst": [(k, r) for r, k, _ in worst[:10]],
                       "equivalent": ok, "tolerances": {"grad": args.grad_tol, "loss": args.loss_tol,
                                                        "weights_note": args.weight_tol}}, f, indent=2)
    return 0 if ok else 1


def main(argv: Optional[list[str]] = None) -> int:
    d = None
    try:
        args = parse_args(argv)
        if args.compare:
            return compare(*args.compare, args)
        if args.summarize:
            return summarize(args.summarize)
        if args.check_equivalence:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts
        d, _ = setup(args)
        if args.check_equivalence:
            check_equivalence(args, d)
            return 0
        res = benchmark(args, d)
        if d.rank == 0:
            print_table(res)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=2)
                print(f"wrote {args.json}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - some failures deserve a clear line too
        from src.ops import OpsBuildError

        if isinstance(e, OpsBuildError):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        if d is not None:
            d.close()


if __name__ == "__main__":
    sys.exit(main())
