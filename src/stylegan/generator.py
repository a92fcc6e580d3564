"""The StyleGAN2-ADA ``Generator``: a mapping network followed by a synthesis network.

Its constructor keyword arguments are those of the official network pickles and are kept, as
plain JSON data, in ``init_kwargs``, from which the loaders and ``save_generator`` rebuild it.
The submodules ``synthesis`` and ``mapping`` are registered in the official state-dict order.
"""

from __future__ import annotations

import torch

from src.stylegan.layers import check_keys, json_plain, positive_int
from src.stylegan.mapping import MAPPING_KEYS, MappingNetwork
from src.stylegan.synthesis import SynthesisNetwork


class Generator(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, R, R] in about [-1, 1].

    Submodules ``synthesis`` (registered first, as in the official state dict) and ``mapping``.
    """

    def __init__(self, z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs=None,
                 synthesis_kwargs=None):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        check_keys(mapping_kwargs, MAPPING_KEYS, "mapping_kwargs")
        self.init_kwargs = json_plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                           img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                           synthesis_kwargs=synthesis_kwargs), "Generator kwargs")
        self.z_dim = positive_int(z_dim, "z_dim", allow_zero=True)
        self.c_dim = positive_int(c_dim, "c_dim", allow_zero=True)
        self.w_dim = positive_int(w_dim, "w_dim")
        self.img_resolution = int(img_resolution)
        self.img_channels = img_channels
        self.synthesis = SynthesisNetwork(w_dim=w_dim, img_resolution=img_resolution, img_channels=img_channels,
                                          **synthesis_kwargs)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=self.num_ws, **mapping_kwargs)

    def forward(self, z, c=None, truncation_psi=1, truncation_cutoff=None, update_emas=False, **synthesis_kwargs):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                          update_emas=update_emas)
        return self.synthesis(ws, **synthesis_kwargs)


