"""StyleGAN2-ADA training of our networks on synthetic renders, built for throughput.

One ``training_step`` is one iteration of the official loop, folded into two optimiser steps:

* G: non-saturating loss on ``batch_size`` fakes (style mixing with ``style_mixing_prob``); every
  ``pl_interval`` iterations the path-length penalty on ``batch_size // pl_batch_shrink`` extra
  fakes is added to the same loss, weighted ``pl_weight * pl_interval`` (lazy regularisation).
* D: logistic loss on fakes (made without graph) and on reals rendered on the GPU by
  ``src.embedded.render``; every ``r1_interval`` iterations the R1 penalty
  ``gamma/2 * r1_interval`` is added, computed on the same real forward pass.
* G_ema: EMA of G with a half-life of ``ema_kimg`` thousand images and ramp-up ``ema_rampup``.
* optional ADA: ``AugmentPipe`` on every image D sees, p driven by E[sign(D(real))] -> target.

Lightning's ``global_step`` counts optimiser steps, so it grows by 2 per iteration
(``trainer.max_steps = 2 * iterations``). Nothing in the step reads a device value on the host:
no ``.item()``, no tensor-valued ``if``, ADA's p stays a device tensor; metrics are logged as
tensors every ``log_every`` iterations and only the logger flush syncs.

Mixed precision: ``precision='fp16_res'`` is the official design (the top ``num_fp16_res`` blocks
of G and D run in fp16 with ``conv_clamp``; gradients pass ``nan_to_num``), ``'bf16'`` wraps G/D
forwards in bf16 autocast (networks built without fp16 blocks), ``'fp32'`` disables both.
The Lightning trainer itself must run at ``32-true``.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from src.data.augment import AdaptiveP, AugmentPipe
from src.losses.gan import (PathLengthPenalty, d_logistic_loss, ema_beta, g_nonsaturating_loss,
                            lazy_optimizer_params, r1_penalty, update_ema)
from src.embedded.datamodule import RenderIndexDataModule
from src.ops.resize import resize
from src.embedded.training.common import GeneratedEvalHooks
from src.utils.errors import UserError

__all__ = ["StyleGANModule", "RenderStepDataModule", "RandomConvFeatures", "build_feature_extractor"]

_PRECISIONS = ("fp16_res", "bf16", "fp32")


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig -> plain dict/list (recursively); other values unchanged."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


# The data module only hands out step/batch indices: the module renders its data in the step.
RenderStepDataModule = RenderIndexDataModule


# --------------------------------------------------------------------------------------------
# feature extractors for the Frechet distance
# --------------------------------------------------------------------------------------------
class RandomConvFeatures(nn.Module):
    """A fixed, randomly initialised conv net (seed 0): img [N,3,H,W] in [-1,1] -> [N, 256].

    Used when no trained feature network is configured. Random conv features are a known,
    weak-but-informative embedding for Frechet distances; values are only comparable between
    runs that use this same extractor (same seed, same architecture).
    """

    num_features = 256

    def __init__(self, input_size: int = 64):
        super().__init__()
        self.input_size = input_size
        gen = torch.Generator().manual_seed(0)
        chans = [3, 32, 64, 128, 128]
        layers = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            layers += [conv, nn.LeakyReLU(0.2)]
        self.net = nn.Sequential(*layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, img: Tensor) -> Tensor:
        x = resize(img.float(), (self.input_size, self.input_size), mode="bilinear", antialias=True)
        h = self.net(x)
        # Mean and std pooling: 128 + 128 = 256 features.
        return torch.cat([h.mean((2, 3)), h.std((2, 3))], 1)


class _ClipImageFeatures(nn.Module):
    """The small CLIP's image tower as a feature extractor: img [N,3,H,W] -> [N, embed_dim]."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.num_features = int(clip.embed_dim)

    def forward(self, img: Tensor) -> Tensor:
        return self.clip.encode_image(img.float()).float()


class _OracleFeatures(nn.Module):
    """The attribute oracle's predictions as features: img -> [N, P] in [0, 1]."""

    def __init__(self, oracle: nn.Module, num_features: int):
        super().__init__()
        self.oracle = oracle.eval().requires_grad_(False)
        self.num_features = int(num_features)

    def forward(self, img: Tensor) -> Tensor:
        return self.oracle(img.float()).float()


def _load_oracle(path: str) -> nn.Module:
    """Load the attribute oracle (``src.embedded.oracle.load_oracle``) on CPU."""
    try:
        from src.embedded.oracle import load_oracle  # owned by the oracle task
    except ImportError as e:  # pragma: no cover - depends on another module being present
        raise UserError(f"model.oracle_path is set but the oracle loader is unavailable: {e}") from e
    return load_oracle(path, "cpu")  # raises UserError for missing/mismatched files


def build_feature_extractor(clip_path: Optional[str] = None, oracle: Optional[nn.Module] = None,
                            num_params: Optional[int] = None) -> nn.Module:
    """Feature net for the Frechet distance: small CLIP tower > oracle > fixed random conv net."""
    if clip_path:
        from src.networks.small_clip import load_small_clip

        if not Path(clip_path).is_file():
            raise UserError(f"model.feature_clip_path not found: {clip_path}")
        return _ClipImageFeatures(load_small_clip(clip_path, "cpu"))
    if oracle is not None:
        return _OracleFeatures(oracle, num_params)
    return RandomConvFeatures()


# --------------------------------------------------------------------------------------------
# the Lightning module
# --------------------------------------------------------------------------------------------
class StyleGANModule(GeneratedEvalHooks, pl.LightningModule):
    """StyleGAN2(-ADA) GAN training with manual optimisation.

    Args (all plain values, as Hydra gives them):
        resolution: image size (power of two); the renderer draws reals at this size.
        G_kwargs: Generator kwargs besides c_dim/img_resolution/img_channels, e.g.
            {z_dim, w_dim, mapping_kwargs: {num_layers}, synthesis_kwargs: {channel_base,
            channel_max, num_fp16_res, conv_clamp}}.
        D_kwargs: Discriminator kwargs besides c_dim/img_resolution/img_channels.
        batch_size: images per iteration (G and D phases each).
        g_lr, d_lr, betas: Adam settings before the lazy-regularisation adjustment.
        r1_gamma: R1 weight; None -> the official heuristic 0.0002 * res^2 / batch_size.
        r1_interval, pl_interval: lazy intervals (0 disables the regulariser).
        pl_weight, pl_batch_shrink, pl_decay: path-length settings.
        style_mixing_prob: probability that a sample's ws are mixed from two latents.
        ema_kimg, ema_rampup: G_ema half-life (thousand images) and ramp-up (None: off).
        ada, ada_target, ada_interval, ada_kimg, augment_p, augment_kwargs: adaptive augmentation.
        precision: 'fp16_res' | 'bf16' | 'fp32' (see module docstring).
        allow_tf32: allow TF32 matmuls/convs (speed on Ampere+).
        seed: seed of the device generator used for real renders.
        log_every: log losses every this many iterations (tensors, no sync in the step).
        export_path: where G_ema is saved at the end of training (``.safetensors`` + ``.json``).
        feature_clip_path / oracle_path: feature nets for the validation metrics (see
            ``build_feature_extractor``); oracle_path also enables ``val/attr_dist``.
        sample_dir: when set, a grid of G_ema samples is saved there after every validation.
        fused_adam: use Adam(fused=True) on CUDA (foreach elsewhere).
    """

    def __init__(self, resolution: int = 128, G_kwargs: Optional[Dict[str, Any]] = None,
                 D_kwargs: Optional[Dict[str, Any]] = None, batch_size: int = 64,
                 g_lr: float = 0.0025, d_lr: float = 0.0025, betas=(0.0, 0.99),
                 r1_gamma: Optional[float] = None, r1_interval: int = 16, pl_interval: int = 4,
                 pl_weight: float = 2.0, pl_batch_shrink: int = 2, pl_decay: float = 0.01,
                 style_mixing_prob: float = 0.9, ema_kimg: Optional[float] = None,
                 ema_rampup: Optional[float] = 0.05, ada: bool = False, ada_target: float = 0.6,
                 ada_interval: int = 4, ada_kimg: float = 500.0, augment_p: float = 0.0,
                 augment_kwargs: Optional[Dict[str, Any]] = None, precision: str = "fp16_res",
                 allow_tf32: bool = True, seed: int = 0, log_every: int = 50,
                 export_path: Optional[str] = None, feature_clip_path: Optional[str] = None,
                 oracle_path: Optional[str] = None, sample_dir: Optional[str] = None,
                 fused_adam: bool = True):
        super().__init__()
        from src.stylegan import Discriminator, Generator

        if precision not in _PRECISIONS:
            raise UserError(f"model.precision '{precision}' is not one of {', '.join(_PRECISIONS)}")
        if resolution < 8 or resolution & (resolution - 1):
            raise UserError(f"model.resolution must be a power of two >= 8, got {resolution}")
        if batch_size < 1 or (pl_interval and batch_size // max(pl_batch_shrink, 1) < 1):
            raise UserError(f"model.batch_size {batch_size} is too small for pl_batch_shrink {pl_batch_shrink}")
        # Hydra hands nested nodes over as DictConfig/ListConfig: make them plain so that the
        # checkpoint's hyper_parameters load with weights_only=True (save_hyperparameters reads
        # these locals).
        G_kwargs, D_kwargs, augment_kwargs, betas = (_plain(G_kwargs), _plain(D_kwargs), _plain(augment_kwargs),
                                                     _plain(betas))
        self.save_hyperparameters()
        self.automatic_optimization = False

        G_kwargs = copy.deepcopy(dict(G_kwargs or {}))
        D_kwargs = copy.deepcopy(dict(D_kwargs or {}))
        if precision != "fp16_res":
            # bf16/fp32: no fp16 blocks inside the networks (conv_clamp kept as configured).
            G_kwargs.setdefault("synthesis_kwargs", {})["num_fp16_res"] = 0
            D_kwargs["num_fp16_res"] = 0
        self.G = Generator(c_dim=0, img_resolution=resolution, img_channels=3, **G_kwargs)
        self.D = Discriminator(c_dim=0, img_resolution=resolution, img_channels=3, **D_kwargs)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.pl_penalty = PathLengthPenalty(pl_decay)
        self.augment_pipe = AugmentPipe(p=augment_p, **(augment_kwargs or {})) if ada or augment_p > 0 else None
        self.ada_stats = AdaptiveP(ada_target, ada_kimg) if ada else None

        self.resolution = resolution
        self.batch_size = batch_size
        self.r1_gamma = 0.0002 * resolution ** 2 / batch_size if r1_gamma is None else float(r1_gamma)
        self.ema_kimg = batch_size * 10 / 32 if ema_kimg is None else float(ema_kimg)
        self.z_dim = int(self.G.z_dim)

        # Progress counters are plain ints (no device round trip); saved in checkpoints.
        self.cur_nimg = 0
        self.iteration = 0
        self._gen: Optional[torch.Generator] = None
        self._side_stream = None
        self._next_real: Optional[Tensor] = None

        # Validation metrics (built lazily on the right device at first use).
        # The FID metric lives in a plain dict so it is not registered as a submodule (it would
        # otherwise appear in state_dict only after the first validation and break resuming).
        self._eval_objs: Dict[str, Any] = {}
        self._oracle = _load_oracle(oracle_path) if oracle_path else None
        self._feature_net = build_feature_extractor(feature_clip_path, self._oracle,
                                                    self._oracle_num_params() if self._oracle is not None else None)

    # ---------------------------------------------------------------- helpers
    def _oracle_num_params(self) -> int:
        n = getattr(self._oracle, "num_params", None)
        if n is None:
            with torch.no_grad():
                n = self._oracle(torch.zeros(1, 3, self.resolution, self.resolution)).shape[1]
        return int(n)

    def _autocast(self):
        if self.hparams.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _c(self, n: int) -> Tensor:
        return torch.zeros(n, 0, device=self.device)

    def _render_reals(self, n: int, generator: torch.Generator) -> Tensor:
        """[n, 3, R, R] in [-1, 1] rendered on this module's device (on the current stream).

        ``sample_params`` draws on a CPU generator; the parameters go to the GPU through pinned
        memory with ``non_blocking=True`` so that the copy does not stall the host.
        """
        from src.embedded import render, sample_params

        params = sample_params(n, generator, "cpu")
        if self.device.type == "cuda":
            params = params.pin_memory().to(self.device, non_blocking=True)
        return render(params, self.resolution).to(self.device, torch.float32)

    def _prefetch_reals(self) -> None:
        """Render the next training batch of reals ahead of time.

        On CUDA the render runs on a side stream: the renderer's own host syncs (value checks,
        small constant uploads) then wait only for that stream, not for the queued G/D work,
        and its kernels overlap with training. On CPU it simply renders.
        """
        if self.device.type != "cuda":
            self._next_real = self._render_reals(self.batch_size, self._gen)
            return
        if self._side_stream is None:
            self._side_stream = torch.cuda.Stream(device=self.device)
        # No wait on the main stream: the render reads only fresh pinned parameters, and the
        # result is handed over with wait_stream + record_stream in _take_reals.
        with torch.cuda.stream(self._side_stream):
            self._next_real = self._render_reals(self.batch_size, self._gen)

    def _take_reals(self) -> Tensor:
        """The prefetched reals [B, 3, R, R], safe to use on the current stream."""
        if self._next_real is None:
            self._prefetch_reals()
        real = self._next_real
        self._next_real = None
        if self.device.type == "cuda":
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(self._side_stream)
            # The allocator must not recycle this memory until the main stream is done with it.
            real.record_stream(main)
        return real

    def _mapping(self, G: nn.Module, z: Tensor, update_emas: bool = False, mixing: bool = True) -> Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim], with per-sample style mixing.

        Mixing picks a cutoff in [1, num_ws) per sample and takes the layers >= cutoff from a
        second latent; a ``where`` on a layer mask avoids a host-side slice index.
        """
        c = self._c(z.shape[0])
        ws = G.mapping(z, c, update_emas=update_emas)
        p = self.hparams.style_mixing_prob
        if mixing and p > 0:
            n, num_ws = ws.shape[0], ws.shape[1]
            cutoff = torch.randint(1, num_ws, (n, 1), device=ws.device)
            cutoff = torch.where(torch.rand(n, 1, device=ws.device) < p, cutoff, torch.full_like(cutoff, num_ws))
            ws2 = G.mapping(torch.randn_like(z), c, update_emas=False)
            layer = torch.arange(num_ws, device=ws.device).view(1, num_ws)
            ws = torch.where((layer >= cutoff).unsqueeze(2), ws2, ws)
        return ws

    def _run_D(self, img: Tensor) -> Tensor:
        if self.augment_pipe is not None:
            img = self.augment_pipe(img)
        with self._autocast():
            return self.D(img, self._c(img.shape[0])).float()

    def _synth(self, G: nn.Module, ws: Tensor, noise_mode: str = "random") -> Tensor:
        with self._autocast():
            return G.synthesis(ws, noise_mode=noise_mode).float()

    def _clean_grads(self, module: nn.Module) -> None:
        # fp16 blocks can overflow: the official code zeroes NaNs and clips infs in gradients.
        for p in module.parameters():
            if p.grad is not None:
                torch.nan_to_num(p.grad, nan=0.0, posinf=1e5, neginf=-1e5, out=p.grad)

    # ---------------------------------------------------------------- Lightning hooks
    def configure_optimizers(self):
        h = self.hparams
        g_lr, g_betas = lazy_optimizer_params(h.g_lr, h.betas, h.pl_interval if h.pl_weight > 0 else 0)
        d_lr, d_betas = lazy_optimizer_params(h.d_lr, h.betas, h.r1_interval if self.r1_gamma > 0 else 0)
        # Fused Adam keeps its step counters on the GPU: no host reads in opt.step().
        kw = dict(fused=True) if (self.device.type == "cuda" and h.fused_adam) else dict(foreach=True)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=1e-8, **kw)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8, **kw)
        return [opt_g, opt_d]

    def on_fit_start(self) -> None:
        prec = str(self.trainer.precision)
        if prec not in ("32-true", "32"):
            raise UserError(f"task=stylegan manages its own mixed precision (model.precision); "
                            f"run the trainer at 32-true, not '{prec}'")
        if self.trainer.world_size > 1:
            # Two optimisers toggling requires_grad each phase plus double backward (R1, PL) do
            # not fit DDP's gradient hooks; the shipped 128 px config trains on one GPU.
            raise UserError("task=stylegan trains on a single device; use hardware.devices=1")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = bool(self.hparams.allow_tf32)
            torch.backends.cudnn.allow_tf32 = bool(self.hparams.allow_tf32)
        self._ensure_generator()

    def _ensure_generator(self) -> None:
        if self._gen is None:
            rank = self.global_rank if self._trainer is not None else 0
            self._gen = torch.Generator()  # CPU: sample_params is device independent by design
            self._gen.manual_seed(int(self.hparams.seed) * 1000003 + rank)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One official-loop iteration: G step (+ lazy PL), D step (+ lazy R1), EMA, ADA."""
        h = self.hparams
        self._ensure_generator()
        opt_g, opt_d = self.optimizers()
        B = self.batch_size
        it = self.iteration
        do_pl = h.pl_interval > 0 and h.pl_weight > 0 and it % h.pl_interval == 0
        do_r1 = h.r1_interval > 0 and self.r1_gamma > 0 and it % h.r1_interval == 0
        log_now = h.log_every > 0 and (it + 1) % h.log_every == 0

        # ---- G phase --------------------------------------------------------------------
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        z = torch.randn(B, self.z_dim, device=self.device)
        ws = self._mapping(self.G, z, update_emas=True)
        fake = self._synth(self.G, ws)
        loss_g = g_nonsaturating_loss(self._run_D(fake))
        loss_g_total = loss_g
        pl_pen = None
        if do_pl:
            n_pl = max(B // h.pl_batch_shrink, 1)
            ws_pl = self._mapping(self.G, torch.randn(n_pl, self.z_dim, device=self.device))
            img_pl = self._synth(self.G, ws_pl)
            pl_pen = self.pl_penalty(img_pl, ws_pl).mean()
            loss_g_total = loss_g_total + pl_pen * (h.pl_weight * h.pl_interval)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss_g_total)
        if h.precision == "fp16_res":
            self._clean_grads(self.G)
        opt_g.step()

        # ---- D phase --------------------------------------------------------------------
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        with torch.no_grad():
            ws_d = self._mapping(self.G, torch.randn(B, self.z_dim, device=self.device))
            fake_d = self._synth(self.G, ws_d)
        fake_logits = self._run_D(fake_d)
        real = self._take_reals().detach().requires_grad_(do_r1)
        real_logits = self._run_D(real)
        if self.ada_stats is not None:
            self.ada_stats.accumulate(real_logits)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        loss_d_total = loss_d
        r1 = None
        if do_r1:
            r1 = r1_penalty(real, real_logits).mean()
            loss_d_total = loss_d_total + r1 * (self.r1_gamma / 2 * h.r1_interval)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d_total)
        if h.precision == "fp16_res":
            self._clean_grads(self.D)
        opt_d.step()
        self.D.requires_grad_(False)

        # ---- EMA, ADA, counters ------------------------------------------------------------
        self.cur_nimg += B
        update_ema(self.G_ema, self.G, ema_beta(B, self.ema_kimg, h.ema_rampup, self.cur_nimg))
        if self.ada_stats is not None and (it + 1) % h.ada_interval == 0:
            self.ada_stats.update(self.augment_pipe, B, h.ada_interval)
        self.iteration += 1
        # Queue the next reals now that this iteration's work is queued (overlaps on CUDA).
        self._prefetch_reals()

        if log_now:
            logs = {"train/loss_g": loss_g.detach(), "train/loss_d": loss_d.detach(),
                    "train/logits_real": real_logits.detach().mean(),
                    "train/logits_fake": fake_logits.detach().mean(),
                    "train/pl_mean": self.pl_penalty.pl_mean}
            if self.augment_pipe is not None:
                logs["train/augment_p"] = self.augment_pipe.p
            if self.ada_stats is not None:
                logs["train/ada_rt"] = self.ada_stats.rt
            self.log_dict(logs, on_step=True, on_epoch=False)
            self.log("train/kimg", float(self.cur_nimg) / 1000.0, on_step=True, on_epoch=False)
        return None

    # ---------------------------------------------------------------- evaluation
    def _metric(self):
        fid = self._eval_objs.get("fid")
        if fid is None:
            from torchmetrics.image.fid import FrechetInceptionDistance

            fid = FrechetInceptionDistance(feature=self._feature_net, reset_real_features=True, normalize=True)
        fid = fid.to(self.device)
        self._eval_objs["fid"] = fid
        return fid

    def _eval_start(self) -> None:
        self._metric().reset()
        self._attr = None
        if self._oracle is not None:
            self._oracle = self._oracle.to(self.device)
            p = self._oracle_num_params()
            self._attr = torch.zeros(2, 3, p, device=self.device, dtype=torch.float64)  # real/fake x (n, sum, sumsq)
        self._samples = None

    @torch.no_grad()
    def _eval_step(self, batch_idx: int) -> None:
        # Seeded per batch index: every evaluation compares the same reals and latents.
        gen = torch.Generator().manual_seed(10_000_019 + int(batch_idx))
        B = self.batch_size
        real = self._render_reals(B, gen)
        z = torch.randn(B, self.z_dim, generator=gen).to(self.device)
        ws = self.G_ema.mapping(z, self._c(B))
        fake = self._synth(self.G_ema, ws, noise_mode="const").clamp(-1, 1)
        fid = self._metric()
        fid.update(real, real=True)
        fid.update(fake, real=False)
        if self._attr is not None:
            for k, img in enumerate((real, fake)):
                a = self._oracle(img).double()
                self._attr[k, 0] += a.shape[0]
                self._attr[k, 1] += a.sum(0)
                self._attr[k, 2] += a.square().sum(0)
        if self._samples is None:
            self._samples = fake[:16].detach().cpu()

    def _eval_end(self, prefix: str) -> None:
        fd = self._metric().compute().float()
        self.log(f"{prefix}/fd", fd, sync_dist=False)
        if self._attr is not None:
            n = self._attr[:, 0].clamp(min=1)
            mean = self._attr[:, 1] / n
            std = (self._attr[:, 2] / n - mean.square()).clamp(min=0).sqrt()
            dist = ((mean[0] - mean[1]).abs().mean() + (std[0] - std[1]).abs().mean()).float()
            self.log(f"{prefix}/attr_dist", dist)
        if self.hparams.sample_dir and self._samples is not None and self.global_rank == 0:
            self._save_samples(Path(self.hparams.sample_dir) / f"{prefix}_it{self.iteration:07d}.png")

    def _save_samples(self, path: Path) -> None:
        import torchvision

        from src.utils.io import atomic_write

        grid = torchvision.utils.make_grid((self._samples + 1) / 2, nrow=4).clamp(0, 1)
        with atomic_write(path) as tmp:
            torchvision.utils.save_image(grid, str(tmp))


    # ---------------------------------------------------------------- checkpoint / export
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["stylegan_progress"] = {"cur_nimg": int(self.cur_nimg), "iteration": int(self.iteration)}
        if self._gen is not None:
            checkpoint["stylegan_progress"]["render_rng"] = self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        prog = checkpoint.get("stylegan_progress", {})
        self.cur_nimg = int(prog.get("cur_nimg", 0))
        self.iteration = int(prog.get("iteration", 0))
        if "render_rng" in prog:
            self._gen = torch.Generator()
            self._gen.set_state(prog["render_rng"])

    def export_generator(self, path: str | os.PathLike) -> Path:
        """Save G_ema (fp16 weights) as ``<path>.safetensors`` + ``<path>.json``, atomically.

        The files are first written into a temporary folder beside the target and then moved
        into place with ``os.replace``, so a reader never sees a half-written pair.
        Returns the ``.safetensors`` path.
        """
        from src.stylegan import save_generator

        target = Path(path)
        if target.suffix in (".safetensors", ".json"):
            target = target.with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        G = copy.deepcopy(self.G_ema).cpu().eval()
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".export-") as tmp:
            tmp_target = Path(tmp) / target.name
            save_generator(G, str(tmp_target) + ".safetensors", fp16=True)
            written = sorted(Path(tmp).iterdir())
            if not written:
                raise RuntimeError("save_generator wrote no file")
            for f in written:
                os.replace(f, target.parent / f.name)
        return target.with_suffix(".safetensors")

    def on_train_end(self) -> None:
        if self.hparams.export_path and self.global_rank == 0:
            out = self.export_generator(self.hparams.export_path)
            print(f"exported G_ema to {out}")
