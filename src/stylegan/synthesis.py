"""The StyleGAN2-ADA synthesis network: W+ latents to an image.

``SynthesisLayer`` is the modulated 3x3 convolution with noise, bias, lrelu and clamp (its
demodulation and noise go into ``bias_act``'s fused epilogue); ``ToRGBLayer`` the modulated 1x1
projection to RGB (no demodulation); ``SynthesisBlock`` one resolution (conv0 with x2 up-sampling,
conv1, torgb, in the 'orig', 'skip' or 'resnet' architecture, fp16 where it pays);
``SynthesisNetwork`` the stack of blocks from 4x4 to ``img_resolution`` and the assignment of the
ws to its layers (a torgb shares its w with the next block's conv0).
"""

from __future__ import annotations

import math

import torch
import torch.utils.checkpoint

from src.ops import bias_act, upfirdn2d
from src.stylegan import layers
from src.stylegan.layers import (ACT_GAIN, Conv2dLayer, FullyConnectedLayer, check_activation, check_choice,
                                 check_keys, log2_resolution, modulated_conv2d, modulated_conv2d_deferred,
                                 positive_int)
from src.utils.errors import UserError

NOISE_MODES = ("random", "const", "none")
G_ARCHITECTURES = ("orig", "skip", "resnet")


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (+ optional x2 up-sampling) + noise + bias + lrelu + clamp.

    Parameters: weight [out, in, k, k], noise_strength [], bias [out], affine.* ([in, w_dim], [in]);
    buffers: resample_filter [4, 4], noise_const [res, res].
    forward: x [N, in, res/up, res/up], w [N, w_dim] -> [N, out, res, res].
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        check_activation(activation, "SynthesisLayer activation")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.up = up
        self.use_noise = use_noise
        self.activation = activation
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = kernel_size // 2
        self.act_gain = ACT_GAIN[activation]
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        if use_noise:
            self.register_buffer("noise_const", torch.randn([resolution, resolution]))
            self.noise_strength = torch.nn.Parameter(torch.zeros([]))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="random", fused_modconv=False, gain=1):
        styles = self.affine(w)
        noise = None
        if self.use_noise and noise_mode == "random":
            noise = torch.randn([x.shape[0], 1, self.resolution, self.resolution], device=x.device) \
                * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        # Non-fused path: demodulation and noise come back un-applied and go into bias_act's
        # epilogue (one pass over the conv output instead of two), with the maths of modulated_conv2d.
        x, dcoefs, noise = modulated_conv2d_deferred(
            x, self.weight, styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, demodulate=True, fused_modconv=fused_modconv)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, self.bias.to(x.dtype), act=self.activation, gain=self.act_gain * gain,
                                 clamp=act_clamp, scale=dcoefs, addend=noise)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, resolution={self.resolution}, "
                f"up={self.up}, activation={self.activation}")


class ToRGBLayer(torch.nn.Module):
    """Modulated 1x1 conv without demodulation + bias (+ clamp).

    Parameters: weight [img_ch, in, 1, 1], bias [img_ch], affine.* ([in, w_dim], [in]).
    forward: x [N, in, H, W], w [N, w_dim] -> [N, img_ch, H, W].
    """

    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None, channels_last=False):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.weight = torch.nn.Parameter(
            torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format))
        self.bias = torch.nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x, w, fused_modconv=False):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act.bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)


class SynthesisBlock(torch.nn.Module):
    """One resolution of the synthesis network.

    forward: x [N, in, res/2, res/2] (None for the 4x4 block), img [N, img_ch, res/2, res/2] or None,
    ws [N, num_conv + num_torgb, w_dim] -> (x [N, out, res, res], img [N, img_ch, res, res] or None).
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, architecture="skip",
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, use_fp16=False, fp16_channels_last=False,
                 **layer_kwargs):
        super().__init__()
        check_choice(architecture, G_ARCHITECTURES, "synthesis architecture")
        check_keys(layer_kwargs, ("kernel_size", "use_noise", "activation"), "SynthesisLayer")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
        self.half_dtype = torch.float16  # what the use_fp16 blocks compute in (SynthesisNetwork.set_half_dtype)
        self.channels_last = use_fp16 and fp16_channels_last
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.num_conv = 0
        self.num_torgb = 0
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=2,
                                        resample_filter=resample_filter, conv_clamp=conv_clamp,
                                        channels_last=self.channels_last, **layer_kwargs)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim=w_dim, resolution=resolution,
                                    conv_clamp=conv_clamp, channels_last=self.channels_last, **layer_kwargs)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim=w_dim, conv_clamp=conv_clamp,
                                    channels_last=self.channels_last)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = Conv2dLayer(in_channels, out_channels, kernel_size=1, bias=False, up=2,
                                    resample_filter=resample_filter, channels_last=self.channels_last)

    def forward(self, x, img, ws, force_fp32=False, fused_modconv=None, noise_mode="random"):
        w_iter = iter(ws.unbind(dim=1))
        # fp16 only where it pays (CUDA); on CPU the block runs in fp32 but keeps conv_clamp.
        use_fp16 = self.use_fp16 and not force_fp32 and ws.device.type in layers.FP16_DEVICE_TYPES
        dtype = self.half_dtype if use_fp16 else torch.float32
        memory_format = torch.channels_last if (self.channels_last and use_fp16) else torch.contiguous_format
        n = ws.shape[0]
        if fused_modconv is None:
            # One grouped conv is best for a single sample; for batches the shared-weight conv wins.
            fused_modconv = n == 1 and not self.training
        if self.in_channels == 0:
            x = self.const.to(dtype=dtype).unsqueeze(0).expand(n, -1, -1, -1).contiguous(memory_format=memory_format)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        elif self.architecture == "resnet":
            x = x.to(dtype=dtype, memory_format=memory_format)
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv, gain=math.sqrt(0.5))
            x = y.add_(x)
        else:
            x = x.to(dtype=dtype, memory_format=memory_format)
            x = self.conv0(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
            x = self.conv1(x, next(w_iter), noise_mode=noise_mode, fused_modconv=fused_modconv)
        if img is not None:
            img = upfirdn2d.upsample2d(img, self.resample_filter)
        if self.is_last or self.architecture == "skip":
            y = self.torgb(x, next(w_iter), fused_modconv=fused_modconv)
            y = y.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}, use_fp16={self.use_fp16}"


class SynthesisNetwork(torch.nn.Module):
    """ws [N, num_ws, w_dim] -> img [N, img_channels, img_resolution, img_resolution] (fp32)."""

    def __init__(self, w_dim, img_resolution, img_channels, channel_base=32768, channel_max=512, num_fp16_res=0,
                 **block_kwargs):
        super().__init__()
        log2 = log2_resolution(img_resolution, "img_resolution")
        self.w_dim = positive_int(w_dim, "w_dim")
        self.img_resolution = int(img_resolution)
        self.img_resolution_log2 = log2
        self.img_channels = positive_int(img_channels, "img_channels")
        self.channel_base = positive_int(channel_base, "channel_base")
        self.channel_max = positive_int(channel_max, "channel_max")
        self.num_fp16_res = positive_int(num_fp16_res, "num_fp16_res", allow_zero=True)
        check_keys(block_kwargs, ("architecture", "resample_filter", "conv_clamp", "fp16_channels_last",
                                  "kernel_size", "use_noise", "activation"), "synthesis_kwargs")
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {res: min(self.channel_base // res, self.channel_max) for res in self.block_resolutions}
        bad = [res for res, ch in channels.items() if ch < 1]
        if bad:
            raise UserError(f"channel_base {channel_base} gives 0 channels at resolution {bad[0]}")
        fp16_resolution = max(2 ** (log2 + 1 - self.num_fp16_res), 8)
        self.num_ws = 0
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim=self.w_dim, resolution=res,
                                   img_channels=self.img_channels, is_last=(res == self.img_resolution),
                                   use_fp16=(res >= fp16_resolution), **block_kwargs)
            self.num_ws += block.num_conv
            if res == self.img_resolution:
                self.num_ws += block.num_torgb
            setattr(self, f"b{res}", block)
        # blocks at >= this resolution keep only their inputs for the backward pass and run again
        # in it (activation checkpointing; 0: off). Set by training on a frozen generator.
        self.checkpoint_res = 0

    @property
    def half_dtype(self) -> torch.dtype:
        """What the fp16 blocks (the top ``num_fp16_res`` resolutions) compute in."""
        return self.b4.half_dtype

    def set_half_dtype(self, dtype: torch.dtype) -> "SynthesisNetwork":
        """float16 (the official setting, with conv_clamp) or bfloat16 (float32's range) for the fp16
        blocks; the weights stay as they are. Returns self."""
        if dtype not in (torch.float16, torch.bfloat16):
            raise UserError(f"the generator's half-precision blocks compute in float16 or bfloat16, not {dtype}")
        for res in self.block_resolutions:
            getattr(self, f"b{res}").half_dtype = dtype
        return self

    @property
    def channels_last(self) -> bool:
        """Whether the fp16 blocks run with channels-last (NHWC) activations on a GPU."""
        return any(getattr(self, f"b{res}").channels_last for res in self.block_resolutions)

    def set_channels_last(self, enabled: bool = True) -> "SynthesisNetwork":
        """Channels-last (NHWC) activations in the fp16 blocks, as ``fp16_channels_last`` builds them:
        our NHWC kernels and cuDNN's NHWC convolutions, no layout conversions (1024 px, batch 16 on an
        H100: 1.81 -> 1.48 ms/img). Same images up to fp16 rounding; fp32 blocks and CPUs unchanged.
        The weights keep their layout (a modulated convolution derives its weights on every call).
        Returns self."""
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            block.channels_last = bool(enabled) and block.use_fp16
        return self

    def forward(self, ws, noise_mode="random", force_fp32=False, fused_modconv=None):
        if ws.ndim != 3 or ws.shape[1] != self.num_ws or ws.shape[2] != self.w_dim:
            raise UserError(f"synthesis: ws must have shape [N, {self.num_ws}, {self.w_dim}], got {tuple(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise UserError(f"noise_mode must be one of {', '.join(NOISE_MODES)}, got {noise_mode!r}")
        ws = ws.to(torch.float32)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            # A torgb shares its w with the next block's conv0, hence the overlapping windows.
            block_ws = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            kwargs = dict(force_fp32=force_fp32, fused_modconv=fused_modconv, noise_mode=noise_mode)
            if self.checkpoint_res and res >= self.checkpoint_res and torch.is_grad_enabled() and ws.requires_grad:
                # the recomputation draws the same random noise: checkpoint restores the RNG states
                x, img = torch.utils.checkpoint.checkpoint(block, x, img, block_ws, use_reentrant=False, **kwargs)
            else:
                x, img = block(x, img, block_ws, **kwargs)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")

