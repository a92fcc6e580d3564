"""StyleGAN2-ADA training of our networks on synthetic renders, built for throughput.

Settings: the typed groups of ``src/config/gan.py``. One ``training_step`` is one iteration of the
official loop in two optimiser steps (Lightning's ``global_step`` grows by 2 per iteration):
G: non-saturating loss on style-mixed fakes, every ``pl_interval`` iterations plus the path-length
penalty (lazy regularisation); D: logistic loss on fakes and on reals rendered on the GPU
(``gan_reals``), every ``r1_interval`` iterations plus R1; then the EMA of G (``ema.kimg`` half-life
with ramp-up) and optional ADA. No device value is read on the host in the step; metrics are logged
as tensors. ``precision.mode``: 'fp16_res' (official: top blocks fp16 with conv_clamp, gradients
through nan_to_num), 'bf16' (autocast) or 'fp32'; the trainer runs at 32-true.
``precision.cuda_graphs`` replays the recorded G and D phases (``gan_graphs``) and the render of the
reals (``gan_reals``). Validation metrics:
``gan_metrics``.
"""
from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from pathlib import Path
from dataclasses import asdict
from typing import Any, Dict, Mapping, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from src.config.gan import (PRECISIONS, GanAugmentConfig, GanEmaConfig, GanOptimConfig, GanOutputConfig,
                            GanPrecisionConfig, GanRegularizationConfig, GanValidationConfig, gan_groups,
                            network_kwargs)
from src.data.augment import AdaptiveP, AugmentPipe
from src.losses.gan import (PathLengthPenalty, d_logistic_loss, ema_beta, g_nonsaturating_loss,
                            lazy_optimizer_params, r1_penalty, update_ema)
from src.embedded.training.gan_graphs import PhaseGraphs
from src.embedded.training.gan_metrics import GanEvalHooks
from src.embedded.training.gan_reals import RealPrefetcher
from src.embedded.training.gan_state import EVAL_NETWORKS, align_state_layouts
from src.utils.config import plain
from src.utils.errors import UserError

__all__ = ["StyleGANModule"]


class StyleGANModule(GanEvalHooks, pl.LightningModule):
    """StyleGAN2(-ADA) GAN training with manual optimisation.

    resolution: image size (power of two); the renderer draws reals at this size.
    G_kwargs: Generator kwargs besides c_dim/img_resolution/img_channels, e.g. {z_dim, w_dim,
        mapping_kwargs: {num_layers}, synthesis_kwargs: {channel_base, channel_max, num_fp16_res,
        conv_clamp}}. D_kwargs: Discriminator kwargs besides c_dim/img_resolution/img_channels.
    optim / regularization / ema / augment / precision / validation / output: the typed groups
        ``model.optim`` ... of ``conf/task/stylegan.yaml`` (dataclasses in ``src/config/gan.py``;
        a mapping, None for the defaults, or the dataclass).
    seed: seed of the generator of the training reals' parameters.
    """

    def __init__(self, resolution: int = 128, G_kwargs: Optional[Dict[str, Any]] = None,
                 D_kwargs: Optional[Dict[str, Any]] = None, optim: Optional[Mapping | GanOptimConfig] = None,
                 regularization: Optional[Mapping | GanRegularizationConfig] = None,
                 ema: Optional[Mapping | GanEmaConfig] = None, augment: Optional[Mapping | GanAugmentConfig] = None,
                 precision: Optional[Mapping | GanPrecisionConfig] = None,
                 validation: Optional[Mapping | GanValidationConfig] = None,
                 output: Optional[Mapping | GanOutputConfig] = None, reals: Optional[Mapping] = None, seed: int = 0):
        super().__init__()
        from src.stylegan import Discriminator, Generator

        groups = gan_groups(optim=optim, regularization=regularization, ema=ema, augment=augment,
                            precision=precision, validation=validation, output=output, reals=reals)
        self.optim_cfg, self.reg_cfg, self.ema_cfg = groups["optim"], groups["regularization"], groups["ema"]
        self.augment_cfg, self.precision_cfg = groups["augment"], groups["precision"]
        self.validation_cfg, self.output_cfg = groups["validation"], groups["output"]
        batch_size, reg, aug, mode = self.optim_cfg.batch_size, self.reg_cfg, self.augment_cfg, self.precision_cfg.mode
        if mode not in PRECISIONS:
            raise UserError(f"model.precision.mode '{mode}' is not one of {', '.join(PRECISIONS)}")
        if resolution < 8 or resolution & (resolution - 1):
            raise UserError(f"model.resolution must be a power of two >= 8, got {resolution}")
        if batch_size < 1 or (reg.pl_interval and batch_size // max(reg.pl_batch_shrink, 1) < 1):
            raise UserError(f"model.optim.batch_size {batch_size} is too small for "
                            f"model.regularization.pl_batch_shrink {reg.pl_batch_shrink}")
        # hparams: plain data (checkpoints load with weights_only=True), the groups as dicts;
        # Hydra hands nested nodes over as DictConfig/ListConfig.
        G_kwargs, D_kwargs = plain(G_kwargs), plain(D_kwargs)
        self.save_hyperparameters({"resolution": resolution, "G_kwargs": G_kwargs, "D_kwargs": D_kwargs,
                                   **{name: asdict(cfg) for name, cfg in groups.items()}, "seed": seed})
        self.automatic_optimization = False

        G_kwargs, D_kwargs = network_kwargs(G_kwargs, D_kwargs, mode)
        self.G = Generator(c_dim=0, img_resolution=resolution, img_channels=3, **G_kwargs)
        self.D = Discriminator(c_dim=0, img_resolution=resolution, img_channels=3, **D_kwargs)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.pl_penalty = PathLengthPenalty(reg.pl_decay)
        use_aug = aug.ada or aug.p > 0
        self.augment_pipe = AugmentPipe(p=aug.p, **(aug.kwargs or {})) if use_aug else None
        self.ada_stats = AdaptiveP(aug.ada_target, aug.ada_kimg) if aug.ada else None

        self.resolution = resolution
        self.batch_size = batch_size
        self.r1_gamma = 0.0002 * resolution ** 2 / batch_size if reg.r1_gamma is None else float(reg.r1_gamma)
        self.ema_kimg = batch_size * 10 / 32 if self.ema_cfg.kimg is None else float(self.ema_cfg.kimg)
        self.z_dim = int(self.G.z_dim)

        # Progress counters are plain ints (no device round trip); saved in checkpoints.
        self.cur_nimg = 0
        self.iteration = 0
        self._gen: Optional[torch.Generator] = None  # CPU generator of the training reals
        self._reals = RealPrefetcher(batch_size, resolution, groups["reals"].active_prob, groups["reals"].neutral_prob,
                                     cuda_graphs=self.precision_cfg.cuda_graphs)
        self._graphs: Optional[PhaseGraphs] = None  # CUDA graphs of the phases (precision.cuda_graphs)
        self._process_iterations = 0  # iterations run by this process: the graphs' warm-up counts these
        self._init_eval(self.validation_cfg.feature_clip_path, self.validation_cfg.oracle_path)

    # ---------------------------------------------------------------- helpers
    def _autocast(self):
        if self.precision_cfg.mode == "bf16" and self.device.type == "cuda":
            # no weight-cast cache: it must be off inside a recorded CUDA graph, and each region is one forward
            return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        return nullcontext()

    def _c(self, n: int) -> Tensor:
        return torch.zeros(n, 0, device=self.device)

    def _mapping(self, G: nn.Module, z: Tensor, update_emas: bool = False, mixing: bool = True) -> Tensor:
        """z [N, z_dim] -> ws [N, num_ws, w_dim], with per-sample style mixing.

        Mixing picks a cutoff in [1, num_ws) per sample and takes the layers >= cutoff from a
        second latent; a ``where`` on a layer mask avoids a host-side slice index.
        """
        c = self._c(z.shape[0])
        ws = G.mapping(z, c, update_emas=update_emas)
        p = self.reg_cfg.style_mixing_prob
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
        o, reg = self.optim_cfg, self.reg_cfg
        g_lr, g_betas = lazy_optimizer_params(o.g_lr, o.betas, reg.pl_interval if reg.pl_weight > 0 else 0)
        d_lr, d_betas = lazy_optimizer_params(o.d_lr, o.betas, reg.r1_interval if self.r1_gamma > 0 else 0)
        # Fused Adam keeps its step counters on the GPU: no host reads in opt.step().
        kw = dict(fused=True) if (self.device.type == "cuda" and o.fused_adam) else dict(foreach=True)
        opt_g = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=1e-8, **kw)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8, **kw)
        return [opt_g, opt_d]

    def on_train_start(self) -> None:
        for opt in self.trainer.optimizers:  # after a resume from the compact state (gan_state)
            align_state_layouts(opt)

    def on_fit_start(self) -> None:
        prec = str(self.trainer.precision)
        if prec not in ("32-true", "32"):
            raise UserError(f"task=stylegan manages its own mixed precision (model.precision.mode); "
                            f"run the trainer at 32-true, not '{prec}'")
        if self.trainer.world_size > 1:
            # Two optimisers toggling requires_grad each phase plus double backward (R1, PL) do
            # not fit DDP's gradient hooks; the shipped 128 px config trains on one GPU.
            raise UserError("task=stylegan trains on a single device; use hardware.devices=1")
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = bool(self.precision_cfg.allow_tf32)
            torch.backends.cudnn.allow_tf32 = bool(self.precision_cfg.allow_tf32)
        self._ensure_generator()

    def _ensure_generator(self) -> None:
        if self._gen is None:
            rank = self.global_rank if self._trainer is not None else 0
            self._gen = torch.Generator()  # CPU: sample_params is device independent by design
            self._gen.manual_seed(int(self.hparams.seed) * 1000003 + rank)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        """One official-loop iteration: G step (+ lazy PL), D step (+ lazy R1), EMA, ADA."""
        reg = self.reg_cfg
        self._ensure_generator()
        opt_g, opt_d = self.optimizers()
        B = self.batch_size
        it = self.iteration
        do_pl = reg.pl_interval > 0 and reg.pl_weight > 0 and it % reg.pl_interval == 0
        do_r1 = reg.r1_interval > 0 and self.r1_gamma > 0 and it % reg.r1_interval == 0
        log_every = self.output_cfg.log_every
        log_now = log_every > 0 and (it + 1) % log_every == 0
        graphs = self._phase_graphs()
        local_it = self._process_iterations
        graphed = graphs is not None and graphs.active(local_it)

        # ---- G phase --------------------------------------------------------------------
        self.G.requires_grad_(True)
        self.D.requires_grad_(False)
        g_phase = lambda: self._g_phase(opt_g, do_pl, graphed)  # noqa: E731
        if graphs is None:
            loss_g, _ = g_phase()
        else:
            loss_g, _ = graphs.run(("G", do_pl), g_phase, local_it, params=list(self.G.parameters()))
        opt_g.step()

        # ---- D phase --------------------------------------------------------------------
        self.G.requires_grad_(False)
        self.D.requires_grad_(True)
        real = self._reals.take(self._gen, self.device)
        if graphed:
            real = graphs.static_input("real", real)
        d_phase = lambda: self._d_phase(opt_d, real, do_r1, graphed)  # noqa: E731
        if graphs is None:
            loss_d, real_logits, fake_logits = d_phase()
        else:
            loss_d, real_logits, fake_logits = graphs.run(("D", do_r1), d_phase, local_it,
                                                          params=list(self.D.parameters()))
        if self.ada_stats is not None:
            self.ada_stats.accumulate(real_logits)
        opt_d.step()
        self.D.requires_grad_(False)
        self._process_iterations += 1

        # ---- EMA, ADA, counters ------------------------------------------------------------
        self.cur_nimg += B
        update_ema(self.G_ema, self.G, ema_beta(B, self.ema_kimg, self.ema_cfg.rampup, self.cur_nimg))
        ada_interval = self.augment_cfg.ada_interval
        if self.ada_stats is not None and (it + 1) % ada_interval == 0:
            self.ada_stats.update(self.augment_pipe, B, ada_interval)
        self.iteration += 1
        # Queue the next reals now that this iteration's work is queued (overlaps on CUDA).
        self._reals.prefetch(self._gen, self.device)

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

    def _phase_graphs(self) -> Optional[PhaseGraphs]:
        """The CUDA graph runner when ``precision.cuda_graphs`` is on and the step allows it."""
        if not (self.precision_cfg.cuda_graphs and self.device.type == "cuda" and self.augment_pipe is None):
            return None
        if self._graphs is None:
            self._graphs = PhaseGraphs(self.precision_cfg.graph_warmup)
        return self._graphs

    def on_validation_model_zero_grad(self) -> None:
        # Lightning frees every .grad before validation; recorded phases accumulate into those very
        # tensors, so under graphs they are zeroed in place instead (no re-recording after it).
        self.zero_grad(set_to_none=self._graphs is None)

    def _backward(self, loss: Tensor, graphed: bool) -> None:
        # Inside a recorded phase: autograd only (Lightning's hooks would run at recording, not replay).
        loss.backward() if graphed else self.manual_backward(loss)

    def _g_phase(self, opt_g, do_pl: bool, graphed: bool):
        """G's losses and gradients (the step itself is taken by the caller): (loss_g, pl_penalty)."""
        reg = self.reg_cfg
        z = torch.randn(self.batch_size, self.z_dim, device=self.device)
        ws = self._mapping(self.G, z, update_emas=True)
        loss_g = g_nonsaturating_loss(self._run_D(self._synth(self.G, ws)))
        loss_g_total, pl_pen = loss_g, torch.zeros([], device=self.device)
        if do_pl:
            n_pl = max(self.batch_size // reg.pl_batch_shrink, 1)
            ws_pl = self._mapping(self.G, torch.randn(n_pl, self.z_dim, device=self.device))
            pl_pen = self.pl_penalty(self._synth(self.G, ws_pl), ws_pl).mean()
            loss_g_total = loss_g_total + pl_pen * (reg.pl_weight * reg.pl_interval)
        opt_g.zero_grad(set_to_none=not graphed)
        self._backward(loss_g_total, graphed)
        if self.precision_cfg.mode == "fp16_res":
            self._clean_grads(self.G)
        return loss_g.detach(), pl_pen.detach()

    def _d_phase(self, opt_d, real: Tensor, do_r1: bool, graphed: bool):
        """D's losses and gradients on fresh fakes and ``real``: (loss_d, real_logits, fake_logits)."""
        with torch.no_grad():
            ws_d = self._mapping(self.G, torch.randn(self.batch_size, self.z_dim, device=self.device))
            fake_d = self._synth(self.G, ws_d)
        fake_logits = self._run_D(fake_d)
        real = real.detach().requires_grad_(do_r1)
        real_logits = self._run_D(real)
        loss_d = d_logistic_loss(real_logits, fake_logits)
        loss_d_total = loss_d
        if do_r1:
            r1 = r1_penalty(real, real_logits).mean()
            loss_d_total = loss_d_total + r1 * (self.r1_gamma / 2 * self.reg_cfg.r1_interval)
        opt_d.zero_grad(set_to_none=not graphed)
        self._backward(loss_d_total, graphed)
        if self.precision_cfg.mode == "fp16_res":
            self._clean_grads(self.D)
        return loss_d.detach(), real_logits.detach(), fake_logits.detach()

    # ---------------------------------------------------------------- checkpoint / export
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        checkpoint["stylegan_progress"] = {"cur_nimg": int(self.cur_nimg), "iteration": int(self.iteration)}
        if self._gen is not None:  # before the prefetched batch: a resumed run renders it again
            pending = self._reals.state_before_pending
            checkpoint["stylegan_progress"]["render_rng"] = pending if pending is not None else self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        state = checkpoint.get("state_dict")
        if state is not None:  # evaluation networks the checkpoint leaves out: this config's own
            state.update({k: v for k, v in self.state_dict().items() if k.startswith(EVAL_NETWORKS) and k not in state})
        prog = checkpoint.get("stylegan_progress", {})
        self.cur_nimg = int(prog.get("cur_nimg", 0))
        self.iteration = int(prog.get("iteration", 0))
        if "render_rng" in prog:
            self._gen = torch.Generator()
            self._gen.set_state(prog["render_rng"])

    def export_generator(self, path: str | os.PathLike) -> Path:
        """Save G_ema (fp16 weights) as ``<path>.safetensors`` + ``<path>.json``, each written
        atomically (``save_generator``). Returns the ``.safetensors`` path."""
        from src.stylegan import save_generator

        target = Path(path)
        if target.suffix == ".json":
            target = target.with_suffix("")
        target.parent.mkdir(parents=True, exist_ok=True)
        return save_generator(copy.deepcopy(self.G_ema).cpu().eval(), target, fp16=True)

    def on_train_end(self) -> None:
        if self.output_cfg.export_path and self.global_rank == 0:
            out = self.export_generator(self.output_cfg.export_path)
            print(f"exported G_ema to {out}")
