"""The AnimatorModule of the benchmark (paper settings, in-code frozen networks with random weights,
identical on every rank) and its DDP wrapper."""
from __future__ import annotations

import argparse
import copy
import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from bench.ddp_animator.distributed import Dist
from src.utils.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

# --tiny: a CLIP small enough for CPU smoke tests (open_clip's CLIP class, random weights).
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


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
    return domain, {k: v if isinstance(v, str) else float(v) for k, v in loss.items()}


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
                                train={"frames": args.frames, "clip_finetune": "text" if args.text_lr > 0 else "none",
                                       "clip_lr": args.text_lr or 1e-5, "clip_views": 0,
                                       "lpips_size": 64 if args.tiny else 224, "lpips_path": lpips_dir,
                                       "generator_checkpoint_res": args.checkpoint_res,
                                       "generator_channels_last": not args.nchw},
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
