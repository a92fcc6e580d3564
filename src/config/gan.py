"""Typed config groups of StyleGAN2-ADA training (``src/embedded/training/gan.py``): ``model.optim``,
``model.regularization``, ``model.ema``, ``model.augment``, ``model.precision``, ``model.validation``,
``model.output`` and ``model.reals`` of ``conf/task/stylegan.yaml``. The defaults are the official
ones; ``reals`` (how the synthetic training faces are drawn) has ``sample_params``' defaults."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from src.config.groups import typed_group
from src.utils.errors import UserError

__all__ = ["GanOptimConfig", "GanRegularizationConfig", "GanEmaConfig", "GanAugmentConfig", "GanPrecisionConfig",
           "GanValidationConfig", "GanOutputConfig", "GanRealsConfig", "GAN_GROUPS", "gan_groups",
           "regroup_flat_hparams", "network_kwargs"]

PRECISIONS = ("fp16_res", "bf16", "fp32")


def network_kwargs(G_kwargs: Optional[Mapping], D_kwargs: Optional[Mapping], mode: str) -> tuple[dict, dict]:
    """The G and D constructor kwargs of a run in precision ``mode`` (copies): 'bf16' and 'fp32' run
    no fp16 blocks inside the networks (conv_clamp kept as configured)."""
    G_kwargs, D_kwargs = copy.deepcopy(dict(G_kwargs or {})), copy.deepcopy(dict(D_kwargs or {}))
    if mode != "fp16_res":
        G_kwargs.setdefault("synthesis_kwargs", {})["num_fp16_res"] = 0
        D_kwargs["num_fp16_res"] = 0
    return G_kwargs, D_kwargs


@dataclass
class GanOptimConfig:
    """Batch and Adam settings (``model.optim``); the lrs/betas are before the lazy-regularisation
    adjustment."""
    batch_size: int = 64               # images per iteration (G and D phases each)
    g_lr: float = 0.0025
    d_lr: float = 0.0025
    betas: List[float] = field(default_factory=lambda: [0.0, 0.99])
    fused_adam: bool = True            # Adam(fused=True) on CUDA (foreach elsewhere)


@dataclass
class GanRegularizationConfig:
    """R1, path length and style mixing (``model.regularization``); an interval of 0 disables."""
    r1_gamma: Optional[float] = None   # None: the official heuristic 0.0002 * res^2 / batch_size
    r1_interval: int = 16              # lazy R1 every this many iterations
    pl_interval: int = 4               # lazy path-length penalty every this many iterations
    pl_weight: float = 2.0
    pl_batch_shrink: int = 2           # the penalty runs on batch_size // pl_batch_shrink extra fakes
    pl_decay: float = 0.01             # decay of the running mean path length
    style_mixing_prob: float = 0.9     # probability that a sample's ws are mixed from two latents


@dataclass
class GanEmaConfig:
    """G_ema (``model.ema``)."""
    kimg: Optional[float] = None       # half-life in thousand images; None: batch_size * 10 / 32
    rampup: Optional[float] = 0.05     # half-life capped at rampup * cur_nimg; None: off


@dataclass
class GanAugmentConfig:
    """Augmentation of every image D sees (``model.augment``); ADA drives p from E[sign(D(real))]."""
    ada: bool = False
    ada_target: float = 0.6
    ada_interval: int = 4              # iterations between p updates
    ada_kimg: float = 500.0            # thousand images for p to move by 1
    p: float = 0.0                     # the (initial) augmentation probability; > 0 augments without ADA
    kwargs: Optional[Dict[str, Any]] = None  # AugmentPipe switches, e.g. {xflip: false}


@dataclass
class GanPrecisionConfig:
    """Numerics of G and D (``model.precision``); the Lightning trainer stays at 32-true."""
    mode: str = "fp16_res"             # fp16_res (official: top blocks fp16 + conv_clamp) | bf16 (autocast) | fp32
    allow_tf32: bool = True            # TF32 matmuls/convs on CUDA
    cuda_graphs: bool = False          # record each phase of the step and the reals' render as CUDA graphs
    graph_warmup: int = 32             # eager iterations (in this process) before recording


@dataclass
class GanValidationConfig:
    """Validation/test metrics and samples (``model.validation``; ``gan_metrics``)."""
    feature_clip_path: Optional[str] = None  # small CLIP whose image tower embeds the Frechet distance
    oracle_path: Optional[str] = None  # attribute oracle: FD on its outputs (without a CLIP) + val/attr_dist
    sample_dir: Optional[str] = None   # a grid of G_ema samples saved there after every evaluation


@dataclass
class GanOutputConfig:
    """What the run writes besides checkpoints (``model.output``)."""
    log_every: int = 50                # log the losses every this many iterations; 0 = never
    export_path: Optional[str] = None  # G_ema saved there (.safetensors + .json) at the end of training


@dataclass
class GanRealsConfig:
    """How the training stream draws the faces it renders (``sample_params``)."""
    active_prob: float = 0.35          # each expression/pose parameter uniform over its range in this share
    neutral_prob: float = 0.3          # ... of the faces that are not neutral (jitter only) by this share

    def __post_init__(self):
        for name in ("active_prob", "neutral_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"model.reals.{name} must be a probability in [0, 1], got {getattr(self, name)}")


GAN_GROUPS = {"optim": GanOptimConfig, "regularization": GanRegularizationConfig, "ema": GanEmaConfig,
              "augment": GanAugmentConfig, "precision": GanPrecisionConfig, "validation": GanValidationConfig,
              "output": GanOutputConfig, "reals": GanRealsConfig}


def gan_groups(**nodes: Any) -> Dict[str, Any]:
    """{group name: its dataclass} from the groups' mappings (None: the defaults); an unknown key
    is one UserError line naming ``model.<group>.<key>``."""
    return {name: typed_group(cls, nodes.get(name), f"model.{name}") for name, cls in GAN_GROUPS.items()}


# The flat hyper-parameters of checkpoints written before the groups: old key -> (group, key).
_FLAT = {**{k: ("optim", k) for k in ("batch_size", "g_lr", "d_lr", "betas", "fused_adam")},
         **{k: ("regularization", k) for k in ("r1_gamma", "r1_interval", "pl_interval", "pl_weight",
                                                "pl_batch_shrink", "pl_decay", "style_mixing_prob")},
         "ema_kimg": ("ema", "kimg"), "ema_rampup": ("ema", "rampup"),
         **{k: ("augment", k) for k in ("ada", "ada_target", "ada_interval", "ada_kimg")},
         "augment_p": ("augment", "p"), "augment_kwargs": ("augment", "kwargs"),
         "precision": ("precision", "mode"), "allow_tf32": ("precision", "allow_tf32"),
         **{k: ("validation", k) for k in ("feature_clip_path", "oracle_path", "sample_dir")},
         **{k: ("output", k) for k in ("log_every", "export_path")}}


def regroup_flat_hparams(hp: Dict[str, Any]) -> Dict[str, Any]:
    """A checkpoint's hyper-parameters in the grouped form: flat ones (older checkpoints) are moved
    into their groups; grouped ones come back unchanged."""
    out: Dict[str, Any] = {}
    for key, value in hp.items():
        if key in _FLAT and not (key in GAN_GROUPS and isinstance(value, dict)):  # 'precision' was a string
            group, name = _FLAT[key]
            out.setdefault(group, {})[name] = value
        else:
            out[key] = value
    return out
