"""Training of the synthetic domain's face recogniser (SyntheticFaceID) on renders made on the fly.

Every step draws ``batch_size`` identities (sample_params, seeded by seed, global step and rank) and
renders three faces of each: the anchor, the same identity with a new expression and pose (the
positive) and a near-twin with ``twin_changes`` identity attributes moved and another new expression
(a hard negative; identity_twins). The loss is InfoNCE over anchors x (positives + twins) in both
directions. Views are degraded at random (blur, noise, contrast) so that the network also reads the
softer images of the generator.

Validation (fixed held-out faces, one changed attribute per twin): twin accuracy, the fraction of
faces with cos(anchor, positive) > cos(anchor, twin), overall and per changed attribute; mean
cosines of positives, twins and unrelated faces.
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from src.data.augment import degrade
from src.embedded.params import PARAM_SPACE, identity_twins, sample_params, with_expressions_of
from src.embedded.render import render
from src.embedded.face_id import SyntheticFaceID, save_face_id
from src.utils.errors import UserError
from src.embedded.training.common import RenderTrainedModule
from src.utils.seeds import derive_seed


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE: anchor, positive, negative [B, D] unit vectors -> scalar.

    Anchor i must pick positive i among all positives and all negatives (twins), and positive i must
    pick anchor i among all anchors and all negatives.
    """
    b = anchor.shape[0]
    target = torch.arange(b, device=anchor.device)
    logits_a = anchor @ torch.cat([positive, negative]).T / tau   # [B, 2B]
    logits_p = positive @ torch.cat([anchor, negative]).T / tau
    return 0.5 * (F.cross_entropy(logits_a, target) + F.cross_entropy(logits_p, target))


class FaceIDModule(RenderTrainedModule):
    """LightningModule around SyntheticFaceID.

    resolution/width/hidden/embed_dim: architecture; batch_size: identities per step and rank (x3
    renders); twin_changes: identity attributes moved per training twin; tau: InfoNCE temperature;
    degrade: strength of the view degradations (0 = clean renders); lr, weight_decay, warmup_steps,
    max_steps: AdamW, linear warm-up then cosine decay; seed: face sampling seed; export_path: where
    the weights go when fit ends (None = nowhere).
    """

    def __init__(self, resolution: int = 128, width: int = 24, hidden: int = 256, embed_dim: int = 128,
                 batch_size: int = 128, twin_changes: int = 1, tau: float = 0.1, degrade: float = 1.0,
                 lr: float = 2e-3, weight_decay: float = 0.05, warmup_steps: int = 200,
                 max_steps: int | None = None, seed: int = 0, export_path: str | None = None):
        super().__init__()
        if batch_size < 2:
            raise UserError(f"face_id batch_size must be >= 2, got {batch_size}")
        if tau <= 0 or not 0 <= degrade <= 1:
            raise UserError(f"face_id tau must be > 0 and degrade in [0, 1], got {tau}, {degrade}")
        self.save_hyperparameters()
        self.net = SyntheticFaceID(resolution=resolution, width=width, hidden=hidden, embed_dim=embed_dim)
        self._outputs: dict[str, list[torch.Tensor]] = {"val": [], "test": []}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, 3, H, W] in [-1, 1] -> [N, embed_dim] unit embeddings."""
        return self.net(img)

    def _triplets(self, key: tuple, changes: int, degradation: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(images [3B,3,R,R]: anchors, positives, twins; changed [B,P] bool) on this module's device."""
        g = torch.Generator().manual_seed(derive_seed(*key))
        b = self.hparams.batch_size
        anchor = sample_params(b, g)
        positive = with_expressions_of(anchor, sample_params(b, g))
        twin, changed = identity_twins(anchor, g, changes)
        twin = with_expressions_of(twin, sample_params(b, g))
        params = torch.cat([anchor, positive, twin]).to(self.device)
        with torch.no_grad():
            images = degrade(render(params, self.hparams.resolution), g, degradation)
        return images, changed

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, _ = self._triplets((self.hparams.seed, "face-id-train", self.global_step, self.global_rank),
                                   self.hparams.twin_changes, self.hparams.degrade)
        a, p, n = self.net(images).chunk(3)
        loss = info_nce(a, p, n, self.hparams.tau)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _eval_step(self, split: str, batch) -> None:
        index = int(batch.item() if torch.is_tensor(batch) else batch)
        images, changed = self._triplets((self.hparams.seed, f"face-id-{split}", index), 1, 0.0)
        a, p, n = self.net(images).chunk(3)
        cos_p, cos_n = (a * p).sum(1), (a * n).sum(1)
        cos_other = (a * p.roll(1, dims=0)).sum(1)  # another identity of the batch
        self._outputs[split].append(torch.cat([torch.stack([cos_p, cos_n, cos_other], 1),
                                               changed.float().to(a.device)], 1).detach())

    def _eval_end(self, split: str) -> dict[str, float]:
        outs = self._outputs[split]
        self._outputs[split] = []
        if not outs:
            return {}
        rows = torch.cat(outs)
        if self.trainer is not None and self.trainer.world_size > 1:
            rows = self.all_gather(rows).flatten(0, 1)
        cos_p, cos_n, cos_other, changed = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3:].bool()
        correct = (cos_p > cos_n).float()
        metrics = {f"{split}/twin_acc": float(correct.mean()), f"{split}/cos_positive": float(cos_p.mean()),
                   f"{split}/cos_twin": float(cos_n.mean()), f"{split}/cos_other": float(cos_other.mean()),
                   f"{split}/other_acc": float((cos_p > cos_other).float().mean())}
        per_attr = []
        for i, s in enumerate(PARAM_SPACE.specs):
            if s.kind != "identity" or not changed[:, i].any():
                continue
            acc = float(correct[changed[:, i]].mean())
            metrics[f"{split}/twin_acc/{s.name}"] = acc
            per_attr.append(acc)
        metrics[f"{split}/twin_acc_min"] = min(per_attr) if per_attr else float("nan")
        self.log_dict(metrics, sync_dist=False, rank_zero_only=False)
        return metrics

    def save_weights(self, path: str) -> str:
        """Save the network as <path>.safetensors (fp16) + <path>.json (atomic); returns the weights path."""
        return str(save_face_id(self.net, path, {"trained_steps": int(self.global_step), "seed": self.hparams.seed}))
