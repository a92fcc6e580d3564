"""The StyleGAN2-ADA discriminator: an image (and an optional class label) to a realness logit.

``DiscriminatorBlock`` halves the resolution with two equalised-lr convolutions ('orig', 'skip' or
'resnet', fp16 where it pays, the first ``freeze_layers`` layers frozen as buffers);
``MinibatchStdLayer`` appends the per-group feature std-dev; ``DiscriminatorEpilogue`` is the 4x4
head with the projection onto the mapped class label; ``Discriminator`` stacks them from
``img_resolution`` down to 4x4 and keeps its constructor arguments as JSON in ``init_kwargs``.
"""

from __future__ import annotations

import math

import torch

from src.ops import upfirdn2d
from src.stylegan import layers
from src.stylegan.layers import (Conv2dLayer, FullyConnectedLayer, check_choice, check_keys, json_plain,
                                 log2_resolution, positive_int)
from src.stylegan.mapping import MAPPING_KEYS, MappingNetwork
from src.utils.errors import UserError

D_ARCHITECTURES = ("orig", "skip", "resnet")


class MinibatchStdLayer(torch.nn.Module):
    """Append the per-group std-dev of features as extra channels: [N, C, H, W] -> [N, C+F, H, W].

    Samples are split into groups of G = min(group_size, N) with sample i in group i % (N/G).
    """

    def __init__(self, group_size, num_channels=1):
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n) if self.group_size is not None else n
        f = self.num_channels
        if n % g != 0:
            raise ValueError(f"MinibatchStdLayer: batch {n} is not divisible by the group size {g}")
        y = x.float().reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(dim=0)).square().mean(dim=0)
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [N/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


class DiscriminatorBlock(torch.nn.Module):
    """forward: x [N, in, res, res] or None, img [N, img_ch, res, res] or None
    -> (x [N, out, res/2, res/2], img [N, img_ch, res/2, res/2] ('skip') or None)."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, first_layer_idx,
                 architecture="resnet", activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None,
                 use_fp16=False, fp16_channels_last=False, freeze_layers=0):
        super().__init__()
        check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
        self.in_channels = in_channels
        self.resolution = resolution
        self.img_channels = img_channels
        self.first_layer_idx = first_layer_idx
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.num_layers = 0

        def trainable():
            idx = self.first_layer_idx + self.num_layers
            self.num_layers += 1
            return idx >= freeze_layers

        if in_channels == 0 or architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, kernel_size=1, activation=activation,
                                       trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, kernel_size=3, activation=activation,
                                 trainable=trainable(), conv_clamp=conv_clamp, channels_last=self.channels_last)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, kernel_size=3, activation=activation, down=2,
                                 trainable=trainable(), resample_filter=resample_filter, conv_clamp=conv_clamp,
                                 channels_last=self.channels_last)
        if architecture == "resnet":
            self.skip = Conv2dLayer(tmp_channels, out_channels, kernel_size=1, bias=False, down=2,
                                    trainable=trainable(), resample_filter=resample_filter,
                                    channels_last=self.channels_last)

    def forward(self, x, img, force_fp32=False):
        dev = (x if x is not None else img).device
        use_fp16 = self.use_fp16 and not force_fp32 and dev.type in layers.FP16_DEVICE_TYPES
        dtype = torch.float16 if use_fp16 else torch.float32
        memory_format = torch.channels_last if (self.channels_last and use_fp16) else torch.contiguous_format
        if x is not None:
            x = x.to(dtype=dtype, memory_format=memory_format)
        if self.in_channels == 0 or self.architecture == "skip":
            img = img.to(dtype=dtype, memory_format=memory_format)
            y = self.fromrgb(img)
            x = x + y if x is not None else y
            img = upfirdn2d.downsample2d(img, self.resample_filter) if self.architecture == "skip" else None
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            x = y.add_(x)
        else:
            x = self.conv0(x)
            x = self.conv1(x)
        return x, img


class DiscriminatorEpilogue(torch.nn.Module):
    """forward: x [N, C, 4, 4], img, cmap [N, cmap_dim] or None -> logits [N, 1] (fp32)."""

    def __init__(self, in_channels, cmap_dim, resolution, img_channels, architecture="resnet", mbstd_group_size=4,
                 mbstd_num_channels=1, activation="lrelu", conv_clamp=None):
        super().__init__()
        check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
        self.in_channels = in_channels
        self.cmap_dim = cmap_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.architecture = architecture
        if architecture == "skip":
            self.fromrgb = Conv2dLayer(img_channels, in_channels, kernel_size=1, activation=activation)
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, kernel_size=3, activation=activation,
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation=activation)
        self.out = FullyConnectedLayer(in_channels, 1 if cmap_dim == 0 else cmap_dim)

    def forward(self, x, img, cmap, force_fp32=False):
        x = x.to(dtype=torch.float32, memory_format=torch.contiguous_format)
        if self.architecture == "skip":
            x = x + self.fromrgb(img.to(dtype=torch.float32, memory_format=torch.contiguous_format))
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1))
        x = self.out(x)
        if self.cmap_dim > 0:
            x = (x * cmap).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return x


class Discriminator(torch.nn.Module):
    """img [N, img_channels, R, R], c [N, c_dim] -> logits [N, 1]."""

    def __init__(self, c_dim=0, img_resolution=1024, img_channels=3, architecture="resnet", channel_base=32768,
                 channel_max=512, num_fp16_res=0, conv_clamp=None, cmap_dim=None, block_kwargs=None,
                 mapping_kwargs=None, epilogue_kwargs=None):
        super().__init__()
        block_kwargs = dict(block_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        epilogue_kwargs = dict(epilogue_kwargs or {})
        check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
        check_keys(block_kwargs, ("activation", "resample_filter", "fp16_channels_last", "freeze_layers"),
                   "D block_kwargs")
        check_keys(mapping_kwargs, MAPPING_KEYS, "D mapping_kwargs")
        check_keys(epilogue_kwargs, ("mbstd_group_size", "mbstd_num_channels", "activation"), "D epilogue_kwargs")
        self.init_kwargs = json_plain(dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                           architecture=architecture, channel_base=channel_base,
                                           channel_max=channel_max, num_fp16_res=num_fp16_res, conv_clamp=conv_clamp,
                                           cmap_dim=cmap_dim, block_kwargs=block_kwargs,
                                           mapping_kwargs=mapping_kwargs, epilogue_kwargs=epilogue_kwargs),
                                      "Discriminator kwargs")
        log2 = log2_resolution(img_resolution, "img_resolution")
        self.c_dim = positive_int(c_dim, "c_dim", allow_zero=True)
        self.img_resolution = int(img_resolution)
        self.img_channels = positive_int(img_channels, "img_channels")
        self.block_resolutions = [2 ** i for i in range(log2, 2, -1)]
        channels = {res: min(channel_base // res, channel_max) for res in self.block_resolutions + [4]}
        if min(channels.values()) < 1:
            raise UserError(f"channel_base {channel_base} gives 0 channels at resolution {self.img_resolution}")
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        if cmap_dim is None:
            cmap_dim = channels[4]
        if self.c_dim == 0:
            cmap_dim = 0
        common = dict(img_channels=self.img_channels, architecture=architecture, conv_clamp=conv_clamp)
        cur_layer_idx = 0
        for res in self.block_resolutions:
            in_channels = channels[res] if res < self.img_resolution else 0
            block = DiscriminatorBlock(in_channels, channels[res], channels[res // 2], resolution=res,
                                       first_layer_idx=cur_layer_idx, use_fp16=(res >= fp16_resolution),
                                       **block_kwargs, **common)
            setattr(self, f"b{res}", block)
            cur_layer_idx += block.num_layers
        if self.c_dim > 0:
            self.mapping = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                                          **mapping_kwargs)
        self.b4 = DiscriminatorEpilogue(channels[4], cmap_dim=cmap_dim, resolution=4, **epilogue_kwargs, **common)

    def forward(self, img, c=None, force_fp32=False, update_emas=False):
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, self.img_resolution, self.img_resolution):
            raise UserError(f"discriminator: img must have shape [N, {self.img_channels}, {self.img_resolution}, "
                            f"{self.img_resolution}], got {tuple(img.shape)}")
        x = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, force_fp32=force_fp32)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, img, cmap)
