"""Validation/test metrics of GAN training: a Frechet distance between rendered reals and G_ema
fakes in the space of a feature network (small CLIP image tower, attribute oracle or a fixed
random conv net), the attribute-statistics distance ``attr_dist`` when an oracle is given, and
a grid of G_ema samples after every evaluation."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn

from src.embedded.training.common import GeneratedEvalHooks
from src.embedded.training.gan_reals import render_reals
from src.ops.resize import resize
from src.utils.errors import UserError

__all__ = ["GanEvalHooks", "RandomConvFeatures", "build_feature_extractor"]


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
        raise UserError(f"model.validation.oracle_path is set but the oracle loader is unavailable: {e}") from e
    return load_oracle(path, "cpu")  # raises UserError for missing/mismatched files


def build_feature_extractor(clip_path: Optional[str] = None, oracle: Optional[nn.Module] = None,
                            num_params: Optional[int] = None) -> nn.Module:
    """Feature net for the Frechet distance: small CLIP tower > oracle > fixed random conv net."""
    if clip_path:
        from src.networks.small_clip import load_small_clip

        if not Path(clip_path).is_file():
            raise UserError(f"model.validation.feature_clip_path not found: {clip_path}")
        return _ClipImageFeatures(load_small_clip(clip_path, "cpu"))
    if oracle is not None:
        return _OracleFeatures(oracle, num_params)
    return RandomConvFeatures()


# --------------------------------------------------------------------------------------------
# the evaluation hooks of the GAN module
# --------------------------------------------------------------------------------------------
class GanEvalHooks(GeneratedEvalHooks):
    """Mixin of ``StyleGANModule``: builds the feature net and computes ``<prefix>/fd``,
    ``<prefix>/attr_dist`` (with an oracle) and the sample grids.

    The host module provides ``G_ema``, ``resolution``, ``batch_size``, ``z_dim``, ``iteration``,
    ``validation_cfg.sample_dir``, ``_c(n)`` and ``_synth(G, ws, noise_mode)``.
    """

    def _init_eval(self, feature_clip_path: Optional[str], oracle_path: Optional[str]) -> None:
        # Validation metrics (built lazily on the right device at first use).
        # The FID metric lives in a plain dict so it is not registered as a submodule (it would
        # otherwise appear in state_dict only after the first validation and break resuming).
        self._eval_objs: Dict[str, Any] = {}
        self._oracle = _load_oracle(oracle_path) if oracle_path else None
        self._feature_net = build_feature_extractor(feature_clip_path, self._oracle,
                                                    self._oracle_num_params() if self._oracle is not None else None)

    def _oracle_num_params(self) -> int:
        n = getattr(self._oracle, "num_params", None)
        if n is None:
            with torch.no_grad():
                n = self._oracle(torch.zeros(1, 3, self.resolution, self.resolution)).shape[1]
        return int(n)

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
        real = render_reals(B, gen, self.resolution, self.device)
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
        sample_dir = self.validation_cfg.sample_dir
        if sample_dir and self._samples is not None and self.global_rank == 0:
            self._save_samples(Path(sample_dir) / f"{prefix}_it{self.iteration:07d}.png")

    def _save_samples(self, path: Path) -> None:
        import torchvision

        from src.utils.io import atomic_write

        grid = torchvision.utils.make_grid((self._samples + 1) / 2, nrow=4).clamp(0, 1)
        with atomic_write(path) as tmp:
            torchvision.utils.save_image(grid, str(tmp))
