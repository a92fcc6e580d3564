"""Training of the attribute oracle on faces rendered on the fly on the module's device.

Batches from the data module are only step/batch indices (RenderIndexDataModule): every step draws
``batch_size`` random faces (sample_params, seeded by seed, global step and rank), renders them on
the module's device and regresses their normalised parameters. Validation/test use fixed held-out
faces (seeded by split and batch index) and report R^2 per parameter.

``targets='identity'`` trains an identity-attribute reader instead: the same kind of network
regressing only the identity parameters, on degraded views (``degrade``) so that it also reads the
softer images of the generator. It is the animator's attribute identity loss
(``domain.identity_loss.kind=attributes``); trained with its own seed, it sees other faces than the
oracle, which stays the independent judge.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from src.data.augment import degrade
from src.embedded.params import PARAM_SPACE, observable_mask, sample_params
from src.embedded.render import render
from src.embedded.oracle import AttributeOracle, save_oracle
from src.utils.errors import UserError
from src.embedded.training.common import RenderTrainedModule
from src.utils.seeds import derive_seed


def r2_per_param(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per column: pred, target [N, P] -> [P]."""
    ss_res = ((pred - target) ** 2).sum(0)
    ss_tot = ((target - target.mean(0)) ** 2).sum(0).clamp(min=1e-12)
    return 1.0 - ss_res / ss_tot


def r2_observable(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """R^2 per parameter over the faces where it is observable (see observable_mask): [P]."""
    mask = observable_mask(target)
    out = torch.empty(target.shape[1], device=target.device)
    for j in range(target.shape[1]):
        m = mask[:, j]
        out[j] = r2_per_param(pred[m, j:j + 1], target[m, j:j + 1])[0] if m.sum() > 1 else float("nan")
    return out


class OracleModule(RenderTrainedModule):
    """LightningModule around AttributeOracle.

    resolution/width/hidden: oracle architecture; batch_size: faces rendered per step (per rank);
    lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay to 0 at
    ``max_steps`` (default: the trainer's max_steps); seed: face sampling seed;
    export_path: where to save the weights (safetensors + json) when fit ends (None = don't);
    targets: 'all' parameters (the oracle) or 'identity' ones (an identity-attribute reader);
    degrade: strength of the training views' blur / contrast / noise (0 = clean renders; validation
    is always clean).
    """

    def __init__(self, resolution: int = 128, width: int = 32, hidden: int = 256, batch_size: int = 256,
                 lr: float = 2e-3, weight_decay: float = 0.05, warmup_steps: int = 200, max_steps: int | None = None,
                 seed: int = 0, export_path: str | None = None, targets: str = "all", degrade: float = 0.0):
        super().__init__()
        if batch_size < 2:
            raise UserError(f"oracle batch_size must be >= 2, got {batch_size}")
        if targets not in ("all", "identity"):
            raise UserError(f"oracle targets must be 'all' or 'identity', got {targets!r}")
        if not 0 <= degrade <= 1:
            raise UserError(f"oracle degrade must be in [0, 1], got {degrade}")
        self.save_hyperparameters()
        # which renderer parameters the outputs regress (a bool mask over PARAM_SPACE)
        self.register_buffer("target_mask", torch.ones(len(PARAM_SPACE), dtype=torch.bool) if targets == "all"
                             else PARAM_SPACE.mask("identity"), persistent=False)
        self.target_names = [n for n, m in zip(PARAM_SPACE.names, self.target_mask.tolist()) if m]
        self.oracle = AttributeOracle(resolution=resolution, num_params=len(self.target_names), width=width,
                                      hidden=hidden)
        self._outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"val": [], "test": []}

    def trained_network(self) -> torch.nn.Module:
        return self.oracle  # (the attribute name is the key prefix of existing checkpoints)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, H, W] in [-1, 1] -> [N, P] normalised parameters."""
        return self.oracle(img)

    def _faces(self, key: tuple, degradation: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [B,3,R,R], normalised params [B,P] of every renderer parameter) rendered on this
        module's device, degraded with strength ``degradation``."""
        g = torch.Generator().manual_seed(derive_seed(*key))
        params = sample_params(self.hparams.batch_size, g).to(self.device)
        with torch.no_grad():
            images = degrade(render(params, self.hparams.resolution), g, degradation)
        return images, PARAM_SPACE.normalize(params)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, target = self._faces((self.hparams.seed, "oracle-train", self.global_step, self.global_rank),
                                     self.hparams.degrade)
        # Unobservable targets (gaze behind closed eyes, frame colour without glasses) are noise:
        # leaving them out of the loss spends the capacity on what an image can show.
        mask = observable_mask(target)[:, self.target_mask].float()
        target = target[:, self.target_mask]
        loss = ((self.oracle(images).float() - target).pow(2) * mask).sum() / mask.sum().clamp_min(1.0)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, split: str, batch) -> None:
        index = int(batch.item() if torch.is_tensor(batch) else batch)
        images, target = self._faces((self.hparams.seed, f"oracle-{split}", index))
        pred = torch.full_like(target, float("nan"))  # the columns this network does not read stay NaN
        pred[:, self.target_mask] = self.oracle(images).float()
        self._outputs[split].append((pred.detach(), target))

    def _eval_end(self, split: str) -> dict[str, float]:
        outs = self._outputs[split]
        self._outputs[split] = []
        if not outs:
            return {}
        pred = torch.cat([p for p, _ in outs])
        target = torch.cat([t for _, t in outs])
        if self.trainer is not None and self.trainer.world_size > 1:
            # every rank evaluated different batches of equal size: gather them all
            pred = self.all_gather(pred).flatten(0, 1)
            target = self.all_gather(target).flatten(0, 1)
        read = self.target_mask.to(pred.device)
        r2 = r2_per_param(pred, target)
        r2o = r2_observable(pred, target)  # the target metric: attributes judged where visible
        metrics = {}
        for i, name in enumerate(PARAM_SPACE.names):
            if read[i]:
                metrics[f"{split}/r2/{name}"] = float(r2[i])
                metrics[f"{split}/r2_observable/{name}"] = float(r2o[i])
        ex = PARAM_SPACE.mask("expression", r2.device)
        for kind, m in (("expression", ex & read), ("identity", ~ex & read)):
            if m.any():  # an identity reader has no expression columns
                metrics[f"{split}/r2_{kind}_min"] = float(r2[m].min())
                metrics[f"{split}/r2_observable_{kind}_min"] = float(r2o[m].min())
        metrics[f"{split}/r2_mean"] = float(r2[read].mean())
        metrics[f"{split}/loss"] = float(F.mse_loss(pred[:, read], target[:, read]))
        self.log_dict(metrics, sync_dist=False, rank_zero_only=False)
        return metrics

    def save_weights(self, path: str) -> str:
        """Save the network as <path>.safetensors + <path>.json (atomic); returns the weights path."""
        # the reader ships beside the animator: fp16 storage halves it (the judge keeps fp32)
        dtype = torch.float16 if self.hparams.targets == "identity" else None
        return str(save_oracle(self.oracle, path, self.target_names, dtype=dtype))
