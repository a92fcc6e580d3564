"""Identity-attribute reader: the embedded domain's identity parameters read back from an image (an
AttributeOracle-type CNN trained on the identity parameters only, ``experiment=embedded_identity_reader``,
with its own seed and faces; the judge of drift is the separately trained oracle). The analogue for
photos is an attribute classifier that keeps the attributes a prompt does not ask for. It serves the
identity loss (``domain.identity_loss.kind=attributes``) and the identity projection of offsets.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from src.embedded.oracle import load_attribute_net
from src.embedded.params import PARAM_SPACE
from src.utils.errors import UserError


class IdentityAttributeReader(nn.Module):
    """Identity attributes of synthetic faces as an identity-loss network.

    net: an AttributeOracle whose outputs are ``names`` (identity parameters, normalised to [0, 1]).
    forward(img [N, 3, H, W] in [-1, 1]) -> readings [N, A].
    identity_distance(f [N, T, A], g [N, 1, A]) -> [N, T]: mean over the attributes the reference
    face g shows of |f - g|, in units of each attribute's range (the frame colour of absent glasses
    is not read: it is untrained noise).
    """

    def __init__(self, net: nn.Module, names: list[str]):
        super().__init__()
        unknown = [n for n in names if n not in PARAM_SPACE.identity_names]
        if unknown or not names:
            listed = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
            raise UserError("an identity-attribute reader must read identity parameters only"
                            + (f"; this one also reads {len(unknown)} others ({listed})" if unknown else ""))
        self.net, self.names = net, list(names)
        # glasses_color is seen only where glasses are worn (reading >= 0.5: glasses is 0/1)
        self.gated = {self.names.index("glasses_color"): self.names.index("glasses")} \
            if "glasses_color" in self.names and "glasses" in self.names else {}

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img).float()

    def shown(self, readings: torch.Tensor) -> torch.Tensor:
        """Which readings [..., A] a face shows: bool [..., A] (the frame colour only with glasses)."""
        seen = torch.ones_like(readings, dtype=torch.bool)
        for shown, by in self.gated.items():
            seen[..., shown] = readings[..., by] >= 0.5
        return seen

    def identity_distance(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        seen = self.shown(g).expand_as(f).to(f.dtype)
        return ((f - g).abs() * seen).sum(-1) / seen.sum(-1).clamp_min(1.0)


def load_identity_reader(path: str | Path, device: str | torch.device = "cpu") -> IdentityAttributeReader:
    """An identity-attribute reader from a file written by save_oracle (targets='identity'), frozen."""
    net, names = load_attribute_net(path, device, what="identity-attribute reader")
    try:
        return IdentityAttributeReader(net, names).eval().requires_grad_(False)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
