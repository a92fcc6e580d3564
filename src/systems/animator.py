"""LightningModule that trains the language-guided animator (the paper's method).

It owns a :class:`~src.pipeline.FaceAnimator` (frozen generator and CLIP, the trainable recurrent
animator) and adds what only training needs: the loss CLIP, LPIPS and identity networks, the
objective (``src/systems/animator_objective.py``), the optimiser, validation metrics and videos
(``src/systems/animator_eval.py``). Frozen parts are eval-mode, requires_grad False, outside the
optimiser and OUT of the checkpoint's state_dict: a checkpoint holds the trainable weights, the
resolved config (hparams) and the sha256 of the frozen weights' files, which are compared when it
is loaded (``hash_check``: error | warn | off). When fit ends, :meth:`AnimatorModule.export` writes
``model.train.export_path`` (``<run dir>/animator.safetensors``), the file ``FaceAnimator.from_pretrained`` reads.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn as nn

from src.networks.animator import DECAYS, MOTION_TOTALS
from src.pipeline import FaceAnimator, components
from src.pipeline.animator_file import FORMAT, read_animator_file
from src.systems.animator_eval import AnimatorEvaluation
from src.systems.animator_objective import AnimatorObjective
from src.config.loss import LossConfig
from src.utils.config import get_dotted, plain
from src.config.animator import (AnimatorInferenceConfig, AnimatorNetConfig, AnimatorTrainConfig,
                               AnimatorValidationConfig, migrate_train_group, typed_group)
from src.utils.errors import UserError

FROZEN = ("generator", "clip", "loss_clip", "perceptual", "identity_net", "identity_metric_net")
LOSS_KEYS = ("contrastive", "lpips", "smoothness", "endpoint", "latent", "identity", "tau")
# how the terms are computed: allowed values, the schema's default (ours) first, the value a config
# that names none gets
LOSS_OPTIONS = {f.name: (f.default.value, *(m.value for m in type(f.default) if m is not f.default))
                for f in fields(LossConfig) if f.name in ("latent_reduction", "negatives", "resize_224")}
H0_SEED_OFFSET = 2**31  # training h_0 seed of a sample = its latent seed + this (see AnimatorModule._h0_seeds)


class AnimatorModule(AnimatorObjective, AnimatorEvaluation, pl.LightningModule):
    """Trains :class:`RecurrentAnimator` against a frozen StyleGAN2 with CLIP/LPIPS/latent losses.

    domain: the domain config (generator.{checkpoint, truncation_psi, noise_mode}, clip, loss_clip,
    prompts, perceptual, identity_loss, identity_metric). loss: weights {contrastive, lpips, smoothness,
    endpoint, latent, identity, tau}. net / train / inference / validation: the typed groups
    ``model.net`` ... of ``conf/task/animator.yaml`` (dataclasses in ``src/config/animator.py``).
    In-code modules (tests, custom identity networks) can be passed as ``generator``, ``clip``,
    ``loss_clip``, ``perceptual``, ``identity_net`` (training loss), ``identity_metric_net``
    (evaluation); they are not saved in hparams.

    train.init_checkpoint: warm start for fine-tuning: the animator weights of an export (.safetensors) or
    a Lightning checkpoint of the same architecture (its optimiser state and step are not taken;
    resuming a run from its own last.ckpt still wins).
    """

    def __init__(self, domain: Mapping, loss: Mapping, net: Optional[Mapping | AnimatorNetConfig] = None,
                 train: Optional[Mapping | AnimatorTrainConfig] = None,
                 inference: Optional[Mapping | AnimatorInferenceConfig] = None,
                 validation: Optional[Mapping | AnimatorValidationConfig] = None, hash_check: str = "error",
                 generator: Optional[nn.Module] = None, clip: Optional[nn.Module] = None,
                 loss_clip: Optional[nn.Module] = None, perceptual: Optional[nn.Module] = None,
                 identity_net: Optional[nn.Module] = None, identity_metric_net: Optional[nn.Module] = None):
        super().__init__()
        domain, loss = plain(domain), plain(loss)
        self.net_cfg = typed_group(AnimatorNetConfig, net, "model.net")
        self.train_cfg = typed_group(AnimatorTrainConfig, migrate_train_group(plain(train)) if isinstance(train, Mapping)
                                     else train, "model.train")
        self.inference_cfg = typed_group(AnimatorInferenceConfig, inference, "model.inference")
        self.validation_cfg = typed_group(AnimatorValidationConfig, validation, "model.validation")
        # hparams: plain data (checkpoints load with weights_only=True), the groups as dicts
        self.save_hyperparameters({"domain": domain, "loss": plain(loss), "net": asdict(self.net_cfg),
                                   "train": asdict(self.train_cfg), "inference": asdict(self.inference_cfg),
                                   "validation": asdict(self.validation_cfg), "hash_check": hash_check})
        missing = [k for k in LOSS_KEYS if k not in loss]
        if missing:
            raise UserError(f"loss config lacks {', '.join(missing)}")
        tc, ic = self.train_cfg, self.inference_cfg
        if tc.clip_views < 0 or tc.clip_view_noise < 0:
            raise UserError(f"model.train.clip_views and model.train.clip_view_noise must be >= 0, "
                            f"got {tc.clip_views}, {tc.clip_view_noise}")
        if tc.clip_loss not in ("contrastive", "cosine"):
            raise UserError(f"model.train.clip_loss '{tc.clip_loss}' is not contrastive or cosine")
        if hash_check not in components.HASH_CHECKS:
            raise UserError(f"hash_check '{hash_check}' is not error, warn or off")
        if ic.motion_total not in MOTION_TOTALS:
            raise UserError(f"motion_total '{ic.motion_total}' is not one of {', '.join(MOTION_TOTALS)}")
        if ic.decay not in DECAYS:
            raise UserError(f"model.inference.decay '{ic.decay}' is not one of {', '.join(DECAYS)}")
        if tc.frames < 2 or ic.frames < 2:
            raise UserError("model.train.frames and model.inference.frames must be >= 2")
        self.domain, self.loss_cfg = domain, {k: float(loss[k]) for k in LOSS_KEYS}
        for key, allowed in LOSS_OPTIONS.items():
            value = str(loss.get(key) or allowed[0])
            if value not in allowed:
                raise UserError(f"loss.{key} '{value}' is not one of {', '.join(allowed)}")
            self.loss_cfg[key] = value
        self.loss_cfg["local_group"] = int(loss.get("local_group") or 0)
        if self.loss_cfg["local_group"] < 0:
            raise UserError(f"loss.local_group must be >= 0, got {loss.get('local_group')}")

        # ---- the inference pipeline: frozen generator and CLIP, the trainable animator. Its modules
        # are this module's children (the same objects): checkpoint keys are generator.*, clip.*, animator.*
        pipeline = FaceAnimator(self.config(), generator=generator, clip=clip)
        self.__dict__["pipeline"] = pipeline  # not a child: its modules are registered below
        self.generator, self.clip, self.animator = pipeline.generator, pipeline.clip, pipeline.animator
        self.clip_params = pipeline.clip_params
        self.prompt_list, self.noise_mode = pipeline.prompt_list, pipeline.noise_mode
        self.frozen_sources = dict(pipeline.frozen_sources)
        self._checkpoint_generator(tc.generator_checkpoint_res)
        if tc.generator_channels_last:
            pipeline.use_channels_last()

        # ---- the CLIP of the loss: the animator's own when it is the same frozen network
        if components.same_clip(domain) and loss_clip is None and tc.clip_finetune == "none":
            self.loss_clip = self.clip
        else:
            self.loss_clip = components.build_clip(domain, "loss_clip", loss_clip)
            self.frozen_sources["loss_clip"] = (list(getattr(self.loss_clip, "weight_files", [])), self.loss_clip)

        # ---- perceptual and identity networks of the losses
        self.perceptual = None
        if perceptual is None and self.loss_cfg["lpips"] > 0:
            from src.networks.perceptual import build_perceptual

            perceptual = build_perceptual(get_dotted(domain, "perceptual", "none"), tc.lpips_path, tc.lpips_size,
                                          resize_mode=self.loss_cfg["resize_224"])
            if perceptual is None:
                warnings.warn("domain.perceptual is 'none': the LPIPS loss term is skipped")
        if perceptual is not None:
            self.perceptual = components.freeze(perceptual)
            self.frozen_sources["perceptual"] = ([f] if (f := getattr(perceptual, "weights_file", None)) else [],
                                                 self.perceptual)
        id_files: list[str] = []
        if identity_net is None and self.loss_cfg["identity"] > 0:
            from src.identity.build import build_identity_net, identity_net_files

            id_kind = get_dotted(domain, "identity_loss.kind", "none")
            id_ckpt = get_dotted(domain, "identity_loss.checkpoint")
            identity_net = build_identity_net(id_kind, id_ckpt)
            id_files = identity_net_files(id_kind, id_ckpt) if identity_net is not None else []
        self.identity_net = components.freeze(identity_net) if identity_net is not None else None
        if self.loss_cfg["identity"] > 0 and self.identity_net is None:
            raise UserError("loss.identity > 0 needs an identity network: set domain.identity_loss.kind and "
                            ".checkpoint (or pass identity_net=...)")
        if self.identity_net is not None:
            self.frozen_sources["identity_net"] = (id_files, self.identity_net)
        self.identity_metric_net = components.freeze(identity_metric_net) if identity_metric_net is not None else None
        # augmentation pipes of the CLIP-loss views, per device (kept out of the module tree: not weights)
        self._view_pipes: dict[str, nn.Module] = {}
        self.frozen_hashes = {name: components.frozen_record(*self.frozen_sources[name]) for name in self.frozen_sources}
        if tc.init_checkpoint:
            self._warm_start(tc.init_checkpoint)

    def _checkpoint_generator(self, res: int) -> None:
        """model.train.generator_checkpoint_res: the frozen generator's blocks at >= res recomputed."""
        synthesis = getattr(self.generator, "synthesis", None)
        if res and (res < 4 or res & (res - 1) or not hasattr(synthesis, "checkpoint_res")):
            raise UserError(f"model.train.generator_checkpoint_res must be 0 or a power of two >= 4 on a "
                            f"StyleGAN2 generator, got {res}")
        if synthesis is not None and hasattr(synthesis, "checkpoint_res"):
            synthesis.checkpoint_res = int(res)

    def config(self) -> dict[str, Any]:
        """The run's resolved configuration as plain data (what the exported file records)."""
        return {k: plain(v) for k, v in self.hparams.items()}

    def _warm_start(self, path: str) -> None:
        """Load the animator weights of ``path`` (an export or a Lightning checkpoint) into self.animator."""
        try:
            record = read_animator_file(path)
        except UserError as e:
            raise UserError(f"model.train.init_checkpoint: {e}") from None
        prefix = "animator."
        weights = {k[len(prefix):]: v for k, v in record.state_dict.items() if k.startswith(prefix)}
        try:
            self.animator.load_state_dict(weights, strict=True)
        except RuntimeError as e:
            raise UserError(f"model.train.init_checkpoint {path}: its animator does not fit this model config "
                            f"({str(e).splitlines()[0]})") from None
        # its motion was learnt against its own generator and CLIP: another one makes the start meaningless
        for name in ("generator", "clip"):
            rec, cur = record.frozen_hashes.get(name), self.frozen_hashes.get(name)
            if rec and cur and rec.get("sha256") != cur["sha256"]:
                warnings.warn(f"model.train.init_checkpoint {path} was trained with another {name} "
                              f"({rec.get('source')}) than this run's ({cur['source']})")

    def train(self, mode: bool = True) -> "AnimatorModule":
        super().train(mode)
        for name in FROZEN:  # frozen networks stay in eval mode (no dropout/batch-stat updates)
            m = getattr(self, name, None)
            if isinstance(m, nn.Module):
                m.eval()
        return self

    # ------------------------------------------------------------------ checkpoints and export
    def is_frozen_key(self, key: str) -> bool:
        return key.split(".", 1)[0] in FROZEN and key not in self.pipeline.trainable_keys()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not self.is_frozen_key(k)}
        checkpoint["frozen_hashes"] = dict(self.frozen_hashes)
        checkpoint["lgfa_format"] = FORMAT

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_frozen_hashes(checkpoint.get("frozen_hashes") or {})

    def check_frozen_hashes(self, saved: Mapping[str, Mapping[str, str]], mode: Optional[str] = None) -> list[str]:
        """Compare saved hashes with the loaded frozen weights (mode default: hparams.hash_check)."""
        return components.compare_hashes(saved, self.frozen_hashes, mode or self.hparams.get("hash_check", "error"))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load trainable weights; the frozen ones come from their own files (already loaded).
        A key that is neither present nor frozen is still an error under ``strict``."""
        full = dict(state_dict)
        for k, v in super().state_dict().items():
            if k not in full and self.is_frozen_key(k):
                full[k] = v
        return super().load_state_dict(full, strict=strict, assign=assign)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not self.is_frozen_key(k)}

    def export(self, path: str | Path, relative_to: Optional[str | Path] = None, fp16: bool = False) -> Path:
        """Write this run's animator as the file ``FaceAnimator.from_pretrained`` reads (atomic)."""
        return self.pipeline.save_pretrained(path, relative_to=relative_to, fp16=fp16, config=self.config())

    # ------------------------------------------------------------------ inference, through the pipeline
    def sample_latents(self, n: Optional[int] = None, seed: Optional[int] = None,
                       seeds: Optional[Sequence[int] | torch.Tensor] = None) -> torch.Tensor:
        return self.pipeline.sample_latents(n, seed=seed, seeds=seeds)

    def synthesize(self, ws: torch.Tensor) -> torch.Tensor:
        return self.pipeline.synthesize(ws)

    def render_image(self, w_input: torch.Tensor) -> torch.Tensor:
        return self.pipeline.render_image(w_input)

    def projection_reader(self) -> nn.Module:
        return self.pipeline.projection_reader()

    def identity_jacobian(self, w_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pipeline.identity_jacobian(w_input)

    def animate(self, w_input: torch.Tensor, prompts: Sequence[str], **kw: Any) -> dict[str, torch.Tensor]:
        """``FaceAnimator.animate`` with this run's current weights."""
        return self.pipeline.animate(w_input, prompts, **kw)

    # ------------------------------------------------------------------ training
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """Move the batch, except its ``seed`` entry [N]: the seeds only seed CPU generators (latent z,
        h_0), so on the GPU they would be read back every step, a host sync per step."""
        if isinstance(batch, Mapping) and isinstance(batch.get("seed"), torch.Tensor):
            rest = {k: v for k, v in batch.items() if k != "seed"}
            moved = super().transfer_batch_to_device(rest, device, dataloader_idx)
            moved["seed"] = batch["seed"]
            return moved
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def _batch_latents(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if batch.get("ws") is not None:
            ws = batch["ws"].to(self.device).float()
            L, C = self.generator.num_ws, self.generator.w_dim
            if ws.shape[-1] != C or ws.ndim not in (2, 3) or (ws.ndim == 3 and ws.shape[1] != L):
                raise UserError(f"input latents have shape {tuple(ws.shape[1:])} per face; the generator takes "
                                f"W [{C}] or W+ [{L}, {C}]")
            return ws[:, None].repeat(1, L, 1) if ws.ndim == 2 else ws
        if batch.get("seed") is not None:
            return self.sample_latents(seeds=batch["seed"])
        return self.sample_latents(len(batch["caption"]), seed=int(torch.randint(0, 2**31 - 1, ()).item()))

    def _h0_seeds(self, batch: Mapping[str, Any]) -> Optional[torch.Tensor]:
        """Training h_0 seeds [N]: one per sample, from the sample's own latent seed, so that h_0 of a
        sample does not depend on how a batch is split over DDP ranks. Offset by 2**31 because the
        data module's latent seeds lie in [0, 2**31): h_0 and z never come from the same stream."""
        seed = batch.get("seed")
        if seed is None:
            return None
        seed = torch.as_tensor(seed, dtype=torch.long).reshape(-1).cpu()
        return seed + H0_SEED_OFFSET

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        total, terms, _ = self.compute_losses(batch)
        n = len(batch["caption"])
        self.log("train/loss", total, prog_bar=True, batch_size=n)
        self.log_dict({f"train/loss_{k}": v.detach() for k, v in terms.items()}, batch_size=n)
        return total

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = int(self.validation_cfg.video_every_n_steps or 0)
        if every > 0 and self.global_step % every == 0 and self.global_rank == 0:
            self.log_video()

    def on_fit_end(self) -> None:
        """Write the trained animator to ``model.train.export_path`` (train.py: the run folder's
        ``animator.safetensors``), the file ``FaceAnimator.from_pretrained`` reads (rank 0; atomic)."""
        if self.train_cfg.export_path and self.trainer is not None and self.trainer.is_global_zero:
            self.export(self.train_cfg.export_path)

    def configure_optimizers(self):
        tc = self.train_cfg
        groups = [{"params": list(self.animator.parameters()), "lr": float(tc.lr)}]
        if self.clip_params:  # the CLIP towers model.train.clip_finetune names (paper: all of it at 1e-5)
            groups.append({"params": self.clip_params, "lr": float(tc.clip_lr)})
        betas = tuple(float(b) for b in tc.betas)
        return torch.optim.Adam(groups, betas=betas)
