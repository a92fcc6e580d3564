"""The ``domain`` group of the train config (``conf/domain/*.yaml``): one face domain's frozen
generator, its CLIPs (the animator's and the loss's), prompts, identity networks, perceptual network
and data. Checked with the rest of the config by :func:`src.config.schema.validate_config`."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import List, Optional


class ClipKind(str, Enum):
    open_clip = "open_clip"   # open_clip model name + pretrained tag or local weights file
    embedded = "embedded"     # the project's small LiT CLIP (assets/)
    module = "module"         # an nn.Module handed over in code (tests)


class NoiseMode(str, Enum):
    random = "random"
    const = "const"
    none = "none"


class IdentityMetric(str, Enum):
    oracle = "oracle"
    dlib = "dlib"
    arcface = "arcface"
    none = "none"


class IdentityLossKind(str, Enum):
    synthetic = "synthetic"   # the synthetic domain's face recogniser (task=face_id)
    arcface = "arcface"       # IR-SE50 weights (model_ir_se50.pth), FFHQ crop
    attributes = "attributes" # the synthetic domain's identity-attribute reader (experiment=embedded_identity_reader)
    none = "none"


@dataclass
class IdentityLossConfig:
    """The network of the animator's identity loss (loss.identity > 0 needs one)."""
    kind: IdentityLossKind = IdentityLossKind.none
    checkpoint: Optional[str] = None


class Perceptual(str, Enum):
    lpips_alex = "lpips_alex"
    lpips_vgg = "lpips_vgg"
    none = "none"


@dataclass
class GeneratorConfig:
    checkpoint: str = "???"
    truncation_psi: float = 0.7
    noise_mode: NoiseMode = NoiseMode.const


@dataclass
class ClipConfig:
    kind: ClipKind = ClipKind.open_clip
    model_name: Optional[str] = None
    pretrained: Optional[str] = None
    checkpoint: Optional[str] = None


@dataclass
class PromptsConfig:
    template: str = "The person is {}."
    concepts: List[str] = field(default_factory=list)


@dataclass
class DomainDataConfig:
    root: Optional[str] = None
    latents: Optional[str] = None
    captions: Optional[str] = None
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    align: bool = False


@dataclass
class DomainConfig:
    name: str = "???"
    resolution: int = 128
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    loss_clip: ClipConfig = field(default_factory=ClipConfig)
    prompts: PromptsConfig = field(default_factory=PromptsConfig)
    identity_metric: IdentityMetric = IdentityMetric.none
    identity_metric_checkpoint: Optional[str] = None  # its weights (oracle / IR-SE50); dlib needs none
    identity_loss: IdentityLossConfig = field(default_factory=IdentityLossConfig)
    perceptual: Perceptual = Perceptual.lpips_alex
    data: DomainDataConfig = field(default_factory=DomainDataConfig)
