"""The StyleGAN2-ADA mapping network: z (and an optional class label c) to intermediate latents w.

``MappingNetwork`` normalises z, embeds c, runs a stack of equalised-lr fully-connected layers,
tracks the moving average ``w_avg`` that truncation pulls towards, and broadcasts w to the
``num_ws`` style inputs of the synthesis network. The discriminator reuses it (num_ws=None, no
w_avg) to embed the class label for its projection head. ``MAPPING_KEYS`` lists the keyword
arguments that ``mapping_kwargs`` of the Generator and Discriminator may carry.
"""

from __future__ import annotations

import torch

from src.stylegan.layers import FullyConnectedLayer, normalize_2nd_moment, positive_int
from src.utils.errors import UserError

MAPPING_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")


class MappingNetwork(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    Parameters: embed.* (c_dim > 0), fc{0..num_layers-1}.*; buffer w_avg [w_dim] (when
    num_ws is not None and w_avg_beta is not None).
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim = positive_int(z_dim, "mapping z_dim", allow_zero=True)
        self.c_dim = positive_int(c_dim, "mapping c_dim", allow_zero=True)
        self.w_dim = positive_int(w_dim, "mapping w_dim")
        self.num_ws = num_ws
        self.num_layers = positive_int(num_layers, "mapping num_layers")
        self.w_avg_beta = w_avg_beta
        if self.z_dim == 0 and self.c_dim == 0:
            raise UserError("mapping network needs z_dim > 0 or c_dim > 0")
        if embed_features is None:
            embed_features = w_dim
        if self.c_dim == 0:
            embed_features = 0
        if layer_features is None:
            layer_features = w_dim
        features = [self.z_dim + embed_features] + [layer_features] * (self.num_layers - 1) + [self.w_dim]
        if self.c_dim > 0:
            self.embed = FullyConnectedLayer(self.c_dim, embed_features)
        for idx in range(self.num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], activation=activation,
                                                         lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros([self.w_dim]))

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = None
        if self.z_dim > 0:
            if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
                raise UserError(f"mapping: z must have shape [N, {self.z_dim}], got "
                                f"{None if z is None else tuple(z.shape)}")
            x = normalize_2nd_moment(z.to(torch.float32))
        if self.c_dim > 0:
            if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
                raise UserError(f"mapping: c must have shape [N, {self.c_dim}] for this conditional model, got "
                                f"{None if c is None else tuple(c.shape)}")
            y = normalize_2nd_moment(self.embed(c.to(torch.float32)))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if update_emas and self.w_avg_beta is not None and hasattr(self, "w_avg"):
            # w_avg <- beta * w_avg + (1 - beta) * mean(w); no host sync.
            self.w_avg.copy_(x.detach().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is not None:
            x = x.unsqueeze(1).repeat([1, self.num_ws, 1])
        if truncation_psi != 1:
            if not hasattr(self, "w_avg"):
                raise UserError("truncation needs w_avg, which this mapping network does not track")
            if self.num_ws is None or truncation_cutoff is None:
                x = self.w_avg.lerp(x, truncation_psi)
            else:
                x[:, :truncation_cutoff] = self.w_avg.lerp(x[:, :truncation_cutoff], truncation_psi)
        return x

    def extra_repr(self) -> str:
        return f"z_dim={self.z_dim}, c_dim={self.c_dim}, w_dim={self.w_dim}, num_ws={self.num_ws}"


