"""The ``loss`` group of the train config (``conf/loss/*.yaml``): the animator's loss weights and how
each term is computed. Checked with the rest of the config by :func:`src.config.schema.validate_config`."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class LatentReduction(str, Enum):
    mean = "mean"             # the latent term averaged over the frames
    sum = "sum"               # summed over the frames (the authors' code: T times the mean)


# local: the prompts of the same GPU's batch (the authors' code); global: the distinct prompts of the
# whole global batch (all GPUs). Functional form: 'global' is a Python keyword.
Negatives = Enum("Negatives", {"local": "local", "global": "global"}, type=str)


class Resize224(str, Enum):
    antialias = "antialias"   # CLIP's Resize + CenterCrop (antialiased) and clamp; bilinear antialiased for LPIPS
    pool = "pool"             # AdaptiveAvgPool2d(224) of the [-1,1] frame, no clamp (the authors' code)


@dataclass
class LossConfig:
    """Loss weights and the choices of how the terms are computed. The paper's values:
    conf/loss/paper.yaml (CelebA-HQ) and conf/loss/metfaces.yaml; ours: conf/loss/default.yaml."""
    contrastive: float = 0.5
    lpips: float = 1.0
    smoothness: float = 1.0
    endpoint: float = 1.0
    latent: float = 1.0
    identity: float = 0.0
    tau: float = 0.07
    latent_reduction: LatentReduction = LatentReduction.sum
    negatives: Negatives = Negatives["global"]
    local_group: Optional[int] = None  # local negatives: contrast within groups of this many prompts of the
                                       # batch (one GPU standing in for GPUs of that batch); null: the whole batch
    resize_224: Resize224 = Resize224.antialias
