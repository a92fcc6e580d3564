"""Typed config groups of the language-guided animator: ``model.net``, ``model.train``,
``model.inference`` and ``model.validation`` of ``conf/task/animator.yaml``. The training module
(``src/systems/animator.py``) takes them as arguments; every animator file records them, and the
inference pipeline (``src/pipeline/face_animator.py``) builds the animator from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from src.config.groups import typed_group  # noqa: F401  (re-exported: the animator's modules import it here)


@dataclass
class AnimatorNetConfig:
    """The recurrent animator's architecture (``model.net``; recorded in every animator file)."""
    hidden: int = 384                  # RNN hidden size (paper)
    variant: str = "ours"              # ours: frame 0 == input face exactly | paper: w + M_img(e) + M_mot(d_t)
    mapper_hidden: Optional[int] = None  # null: the CLIP embedding size (paper)
    mapper_last_activation: str = "lrelu"  # paper: fused lrelu also on the last layer; 'linear' allows negative offsets
    mapper_lr_mul: float = 1.0         # equalised-lr multiplier of the mapper layers
    h0_eval: str = "random"            # random: h0 = 0.01 N(0,I) also at inference (seeded) | zero
    image_offset_schedule: str = "motion"  # image offset scaled by |d_t| / max|d_t| (motion) or t/(T-1) (linear)
    use_image_mapper: bool = True      # the prompt-independent per-image offset M_img(e_img) (paper)
    offset_space: str = "wplus"        # wplus: an offset per W+ layer (paper) | w: one W offset shared by all layers
    offset_layers: Optional[List[int]] = None  # W+ layers the offsets may move; null = all (paper)
    rnn_slope: float = 0.2             # negative slope of the LeakyReLUs in the recurrent cell (paper: 0.01)
    image_branch: bool = True          # start state text + image embedding and M_img (paper, human);
                                       #   false: text-only start state, no image mapper (paper, MetFaces)


@dataclass
class AnimatorTrainConfig:
    """The animator's objective and optimiser (``model.train``)."""
    frames: int = 4                    # frames per training video (paper); inference scales its steps to match
    lr: float = 1.0e-3                 # Adam lr of the RNN and mappers (paper)
    clip_finetune: str = "all"         # which CLIP encoder towers train: none | text | all (paper: all, whole RN50)
    clip_lr: float = 1.0e-5            # their Adam lr (paper 1e-5)
    betas: List[float] = field(default_factory=lambda: [0.0, 0.999])  # Adam betas (paper)
    clip_loss: str = "contrastive"     # contrastive (paper) | cosine (1 - cos); loss.contrastive=0 -> cosine
    cosine_fallback_weight: float = 0.5  # weight of the cosine term when loss.contrastive is 0 (0 = no text loss)
    clip_views: int = 0                # extra label-preserving augmented views of the last frame in the CLIP loss
    clip_view_noise: float = 0.0       # Gaussian pixel noise std of those views
    lpips_size: Optional[int] = 224    # LPIPS computed at 224 px (paper)
    generator_checkpoint_res: int = 0  # the frozen generator's blocks at >= this resolution run again in the
    #                                    backward instead of keeping their activations (0: off): less memory
    generator_channels_last: bool = True   # GPU: channels-last activations in the generator's fp16 blocks
    lpips_path: Optional[str] = None   # LPIPS weights file/folder; null: $LGFA_LPIPS_DIR or ~/.cache/lgfa/lpips
    init_checkpoint: Optional[str] = None  # warm start (fine-tuning): an animator file of this architecture
    export_path: Optional[str] = None  # where fit's end writes the file animate.py reads (null: nowhere)


CLIP_FINETUNE = ("none", "text", "all")


def migrate_train_group(values: Optional[dict]) -> Optional[dict]:
    """``model.train`` as recorded by files that name the CLIP fine-tuning by ``text_lr`` alone
    (text_lr > 0: the text tower trained at that lr; 0: none) -> ``clip_finetune`` / ``clip_lr``."""
    if not isinstance(values, dict) or "text_lr" not in values:
        return values
    values = dict(values)
    text_lr = float(values.pop("text_lr") or 0.0)
    values.setdefault("clip_finetune", "text" if text_lr > 0 else "none")
    if text_lr > 0:
        values.setdefault("clip_lr", text_lr)
    return values


@dataclass
class AnimatorInferenceConfig:
    """How the animator animates by default (``model.inference``; recorded in every animator file)."""
    frames: int = 16                   # frames of validation videos and of animate.py's default
    decay: str = "linear"              # step-size decay: none | linear | sqrt | exp | const
    motion_total: str = "train"        # move as far as training videos (train) or by the paper's step sizes (paper)
    identity_projection: float = 0.0   # 0..1 of the offsets' first-order identity change removed
    projection_reader: Optional[str] = None  # the identity-attribute reader of that projection (needed when > 0)
    text_adapter: bool = False         # the file holds a text adapter for other wordings (scripts/fit_text_adapter.py)


@dataclass
class AnimatorValidationConfig:
    """What validation measures and logs (``model.validation``)."""
    identity_metric_path: Optional[str] = None  # weights of domain.identity_metric: oracle or IR-SE50 (arcface)
    video_every_n_steps: int = 500     # grid video under <run>/videos (and wandb) every N steps; 0 = never
    video_fps: float = 10.0            # the paper writes 10 fps
    num_videos: int = 4
