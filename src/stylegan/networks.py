"""StyleGAN2-ADA generator and discriminator, written from the published maths.

Module, parameter and buffer names, shapes, constructor keyword arguments and run-time gains
follow the official network pickles (docs: /work/shared/docs/stylegan_formats.md), so weights
can be copied by name. Everything is plain ``torch.nn``; the only custom ops are
``src.ops.bias_act`` and ``src.ops.upfirdn2d`` (CUDA kernels on CUDA tensors, ref on CPU).

Conventions: images NCHW float in [-1, 1]; ``ws`` [N, num_ws, w_dim]; ``z`` [N, z_dim];
``c`` [N, c_dim] (a [N, 0] tensor or None when c_dim == 0).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from src.ops import bias_act, upfirdn2d
from src.utils.errors import UserError

_ACT_GAIN = {name: spec.def_gain for name, spec in bias_act.ACTIVATIONS.items()}
NOISE_MODES = ("random", "const", "none")
# Device types on which use_fp16 blocks really compute in fp16 (CPU half convs are slow and gain
# nothing); tests add "cpu" to exercise the fp16 code path without a GPU.
FP16_DEVICE_TYPES = {"cuda"}
G_ARCHITECTURES = ("orig", "skip", "resnet")
D_ARCHITECTURES = ("orig", "skip", "resnet")


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _plain(value, what: str):
    """Deep-copy ``value`` into JSON types (dict/list/str/int/float/bool/None) or raise UserError."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{what}: keys must be strings, got {k!r}")
            out[k] = _plain(v, f"{what}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, what) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return value.item()
    raise UserError(f"{what}: value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _check_keys(kwargs: dict, allowed, what: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(f"{what}: unsupported argument(s) {', '.join(unknown)}; "
                        f"supported: {', '.join(sorted(allowed))}")


def _check_choice(value, choices, what: str) -> None:
    if value not in choices:
        raise UserError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def _check_activation(act, what: str) -> None:
    _check_choice(act, tuple(_ACT_GAIN), what)


def _log2_resolution(res, what: str) -> int:
    if not isinstance(res, (int, np.integer)) or res < 4 or (int(res) & (int(res) - 1)) != 0:
        raise UserError(f"{what} must be a power of two >= 4, got {res!r}")
    return int(round(math.log2(int(res))))


def _positive_int(v, what: str, allow_zero: bool = False) -> int:
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < (0 if allow_zero else 1):
        raise UserError(f"{what} must be an integer >= {0 if allow_zero else 1}, got {v!r}")
    return int(v)


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale x so that mean(x**2) along ``dim`` is 1. [N, C] -> [N, C]."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def _filter_size(f: torch.Tensor) -> int:
    return int(f.shape[-1])


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: Optional[torch.Tensor] = None, up: int = 1,
                    down: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """Convolution with optional FIR up- or down-sampling (the official layer semantics).

    Reference definition (what the fast paths below compute):
      * up == 1, down == 1: cross-correlation with w, zero padding ``padding``;
      * up > 1: zero-insert x by ``up``, pad, filter with f (gain up**2), then a TRUE convolution
        with w (valid); output H*up. Implemented as a stride-``up`` transposed convolution followed by
        the FIR filter (the two LTI steps commute), which is the cheapest exact order;
      * down > 1: pad, filter with f, cross-correlation with w (valid), keep every down-th sample;
        output H/down. Implemented as filter + strided convolution (1x1: filter-with-decimation first).

    Args:
        x: [N, groups*I, H, W]; w: [groups*O, I, k, k]; f: 2D [fh, fw] filter (setup_filter).
    Returns:
        [N, groups*O, H*up/down, W*up/down].
    """
    k = int(w.shape[-1])
    if up > 1 and down > 1:
        raise ValueError("conv2d_resample: up and down at the same time is not supported")
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    fw = _filter_size(f)
    if up > 1:
        # conv_transpose2d wants [groups*I, O, k, k]; unflipped weights make it a true convolution.
        go, i = w.shape[0], w.shape[1]
        wt = w.reshape(groups, go // groups, i, k, k).transpose(1, 2).reshape(groups * i, go // groups, k, k)
        x = F.conv_transpose2d(x, wt, stride=up, groups=groups)
        p0 = padding + (fw + up - 1) // 2 - (k - 1)
        p1 = padding + (fw - up) // 2 - (k - up)
        return upfirdn2d.upfirdn2d(x, f, padding=[p0, p1, p0, p1], gain=up * up)
    p0 = padding + (fw - down + 1) // 2
    p1 = padding + (fw - down) // 2
    if k == 1:
        x = upfirdn2d.upfirdn2d(x, f, down=down, padding=[p0, p1, p0, p1])
        return F.conv2d(x, w, groups=groups)
    x = upfirdn2d.upfirdn2d(x, f, padding=[p0, p1, p0, p1])
    return F.conv2d(x, w, stride=down, groups=groups)


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     noise: Optional[torch.Tensor] = None, up: int = 1, padding: int = 0,
                     resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                     fused_modconv: bool = False) -> torch.Tensor:
    """Modulated (and demodulated) convolution of StyleGAN2.

    y[n, o] = d[n, o] * sum_{i,k} weight[o, i, k] * styles[n, i] * x[n, i, . + k]  (+ noise)
    with d[n, o] = rsqrt(sum_{i,k} (weight[o, i, k] * styles[n, i])**2 + 1e-8) when demodulating.

    Args:
        x: [N, I, H, W] (fp32 or fp16); weight: [O, I, k, k] fp32; styles: [N, I] fp32.
        noise: None or broadcastable to [N, O, H*up, W*up] (already scaled by noise_strength).
        fused_modconv: True -> one grouped conv with per-sample weights (good for N == 1);
            False -> scale the input, one shared-weight conv (one big GEMM for cuDNN), scale the output.
    Returns:
        [N, O, H*up, W*up] in x.dtype.
    """
    n = x.shape[0]
    x, dcoefs, noise = _modulated_conv2d_deferred(x, weight, styles, noise=noise, up=up, padding=padding,
                                                  resample_filter=resample_filter, demodulate=demodulate,
                                                  fused_modconv=fused_modconv)
    if dcoefs is not None and noise is not None:
        return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
    if dcoefs is not None:
        return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    return x


def _modulated_conv2d_deferred(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                               noise: Optional[torch.Tensor] = None, up: int = 1, padding: int = 0,
                               resample_filter: Optional[torch.Tensor] = None, demodulate: bool = True,
                               fused_modconv: bool = False):
    """``modulated_conv2d`` with the epilogue of the non-fused demodulated path left undone.

    That path's last step, ``addcmul(noise, y, dcoefs)``, would read and write the largest
    activations once more; returning its operands lets SynthesisLayer hand them to bias_act,
    whose CUDA kernel applies them in the same pass as bias + lrelu + clamp.

    Args: as modulated_conv2d.
    Returns:
        (y, dcoefs, noise): y [N, O, H*up, W*up] in x.dtype; dcoefs [N, O] fp32 and noise (as given)
        are None when already applied to y (fused and 1x1 paths, no demodulation) or absent. The
        modulated conv's output is ``torch.addcmul(noise.to(y.dtype), y, dcoefs.to(y.dtype)[:, :, None, None])``
        (``y * dcoefs`` without noise).
    """
    n = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if x.dtype == torch.float16 and demodulate:
        # fp16: bring weights and styles to O(1) before they meet the activations; demodulation is
        # invariant to both scalings (up to eps), so only overflow is avoided.
        weight = weight * (1.0 / math.sqrt(in_ch * kh * kw)) / weight.abs().amax(dim=[1, 2, 3], keepdim=True)
        styles = styles / styles.abs().amax(dim=1, keepdim=True)
    dcoefs = None
    if demodulate:
        # sum_{i,k} (w s)^2 = (s^2) @ (sum_k w^2)^T: no [N, O, I, k, k] tensor needed. fp32 always.
        dcoefs = (styles.float().square() @ weight.float().square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()

    if kh == 1 and kw == 1 and up == 1 and padding == 0 and x.is_contiguous():
        # 1x1 (ToRGB): per-sample weights [N, O, I] and one batched GEMM, a single pass over x.
        w = weight[:, :, 0, 0].unsqueeze(0) * styles.reshape(n, 1, -1)
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, -1, 1)
        y = torch.bmm(w.to(x.dtype), x.reshape(n, in_ch, -1)).reshape(n, out_ch, *x.shape[2:])
        return (y + noise.to(x.dtype) if noise is not None else y), None, None

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(n, -1, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding)
        if dcoefs is not None:
            return x, dcoefs, noise  # the caller applies them (modulated_conv2d / bias_act)
        if noise is not None:
            return x + noise.to(x.dtype), None, None
        return x, None, None

    w = weight.unsqueeze(0) * styles.reshape(n, 1, -1, 1, 1)  # [N, O, I, k, k]
    if dcoefs is not None:
        w = w * dcoefs.reshape(n, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw).to(x.dtype)
    x = conv2d_resample(x, w, resample_filter, up=up, padding=padding, groups=n)
    x = x.reshape(n, -1, *x.shape[2:])
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x, None, None


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------

class FullyConnectedLayer(torch.nn.Module):
    """Equalised-lr linear layer: y = act(x @ (weight * lr/sqrt(in)).T + bias * lr).

    Parameters: weight [out, in] (stored / lr_multiplier), bias [out].
    forward: x [N, in] -> [N, out].
    """

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1,
                 bias_init=0):
        super().__init__()
        _check_activation(activation, "FullyConnectedLayer activation")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([self.out_features, self.in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([self.out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(max(self.in_features, 1))
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        x = x.matmul(w.t())
        return bias_act.bias_act(x, b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2dLayer(torch.nn.Module):
    """Equalised-lr convolution with optional FIR up/down-sampling, bias, activation and clamp.

    Parameters: weight [out, in, k, k] (scaled by 1/sqrt(in*k*k) at run time), bias [out];
    buffer resample_filter [4, 4]. forward: x [N, in, H, W] -> [N, out, H*up/down, W*up/down].
    """

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False, trainable=True):
        super().__init__()
        _check_activation(activation, "Conv2dLayer activation")
        self.activation = activation
        self.up = int(up)
        self.down = int(down)
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = int(kernel_size) // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = _ACT_GAIN[activation]
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        weight = torch.randn([out_channels, in_channels, kernel_size, kernel_size]).to(memory_format=memory_format)
        b = torch.zeros([out_channels]) if bias else None
        if trainable:
            self.weight = torch.nn.Parameter(weight)
            self.bias = torch.nn.Parameter(b) if b is not None else None
        else:
            # Frozen layers (D freeze_layers) keep their weights as buffers, as the official D does.
            self.register_buffer("weight", weight)
            if b is not None:
                self.register_buffer("bias", b)
            else:
                self.bias = None

    def forward(self, x: torch.Tensor, gain: float = 1) -> torch.Tensor:
        w = (self.weight * self.weight_gain).to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        act_clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act.bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=act_clamp)


class MappingNetwork(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> ws [N, num_ws, w_dim] (or [N, w_dim] when num_ws is None).

    Parameters: embed.* (c_dim > 0), fc{0..num_layers-1}.*; buffer w_avg [w_dim] (when
    num_ws is not None and w_avg_beta is not None).
    """

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, embed_features=None, layer_features=None,
                 activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim = _positive_int(z_dim, "mapping z_dim", allow_zero=True)
        self.c_dim = _positive_int(c_dim, "mapping c_dim", allow_zero=True)
        self.w_dim = _positive_int(w_dim, "mapping w_dim")
        self.num_ws = num_ws
        self.num_layers = _positive_int(num_layers, "mapping num_layers")
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


class SynthesisLayer(torch.nn.Module):
    """Modulated 3x3 conv (+ optional x2 up-sampling) + noise + bias + lrelu + clamp.

    Parameters: weight [out, in, k, k], noise_strength [], bias [out], affine.* ([in, w_dim], [in]);
    buffers: resample_filter [4, 4], noise_const [res, res].
    forward: x [N, in, res/up, res/up], w [N, w_dim] -> [N, out, res, res].
    """

    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, use_noise=True,
                 activation="lrelu", resample_filter=(1, 3, 3, 1), conv_clamp=None, channels_last=False):
        super().__init__()
        _check_activation(activation, "SynthesisLayer activation")
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
        self.act_gain = _ACT_GAIN[activation]
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
        # epilogue (one pass over the conv output instead of two); reference maths unchanged.
        x, dcoefs, noise = _modulated_conv2d_deferred(
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
        _check_choice(architecture, G_ARCHITECTURES, "synthesis architecture")
        _check_keys(layer_kwargs, ("kernel_size", "use_noise", "activation"), "SynthesisLayer")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.use_fp16 = use_fp16
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
        use_fp16 = self.use_fp16 and not force_fp32 and ws.device.type in FP16_DEVICE_TYPES
        dtype = torch.float16 if use_fp16 else torch.float32
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
        log2 = _log2_resolution(img_resolution, "img_resolution")
        self.w_dim = _positive_int(w_dim, "w_dim")
        self.img_resolution = int(img_resolution)
        self.img_resolution_log2 = log2
        self.img_channels = _positive_int(img_channels, "img_channels")
        self.channel_base = _positive_int(channel_base, "channel_base")
        self.channel_max = _positive_int(channel_max, "channel_max")
        self.num_fp16_res = _positive_int(num_fp16_res, "num_fp16_res", allow_zero=True)
        _check_keys(block_kwargs, ("architecture", "resample_filter", "conv_clamp", "fp16_channels_last",
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
            x, img = block(x, img, block_ws, force_fp32=force_fp32, fused_modconv=fused_modconv,
                           noise_mode=noise_mode)
        return img

    def extra_repr(self) -> str:
        return (f"w_dim={self.w_dim}, num_ws={self.num_ws}, img_resolution={self.img_resolution}, "
                f"img_channels={self.img_channels}, num_fp16_res={self.num_fp16_res}")


MAPPING_KEYS = ("num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta")


class Generator(torch.nn.Module):
    """z [N, z_dim], c [N, c_dim] -> img [N, img_channels, R, R] in about [-1, 1].

    Submodules ``synthesis`` (registered first, as in the official state dict) and ``mapping``.
    """

    def __init__(self, z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs=None,
                 synthesis_kwargs=None):
        super().__init__()
        mapping_kwargs = dict(mapping_kwargs or {})
        synthesis_kwargs = dict(synthesis_kwargs or {})
        _check_keys(mapping_kwargs, MAPPING_KEYS, "mapping_kwargs")
        self.init_kwargs = _plain(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                       img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                       synthesis_kwargs=synthesis_kwargs), "Generator kwargs")
        self.z_dim = _positive_int(z_dim, "z_dim", allow_zero=True)
        self.c_dim = _positive_int(c_dim, "c_dim", allow_zero=True)
        self.w_dim = _positive_int(w_dim, "w_dim")
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


# ----------------------------------------------------------------------------------------------
# Discriminator
# ----------------------------------------------------------------------------------------------

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
        _check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
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
        use_fp16 = self.use_fp16 and not force_fp32 and dev.type in FP16_DEVICE_TYPES
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
        _check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
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
        _check_choice(architecture, D_ARCHITECTURES, "discriminator architecture")
        _check_keys(block_kwargs, ("activation", "resample_filter", "fp16_channels_last", "freeze_layers"),
                    "D block_kwargs")
        _check_keys(mapping_kwargs, MAPPING_KEYS, "D mapping_kwargs")
        _check_keys(epilogue_kwargs, ("mbstd_group_size", "mbstd_num_channels", "activation"), "D epilogue_kwargs")
        self.init_kwargs = _plain(dict(c_dim=c_dim, img_resolution=img_resolution, img_channels=img_channels,
                                       architecture=architecture, channel_base=channel_base, channel_max=channel_max,
                                       num_fp16_res=num_fp16_res, conv_clamp=conv_clamp, cmap_dim=cmap_dim,
                                       block_kwargs=block_kwargs, mapping_kwargs=mapping_kwargs,
                                       epilogue_kwargs=epilogue_kwargs), "Discriminator kwargs")
        log2 = _log2_resolution(img_resolution, "img_resolution")
        self.c_dim = _positive_int(c_dim, "c_dim", allow_zero=True)
        self.img_resolution = int(img_resolution)
        self.img_channels = _positive_int(img_channels, "img_channels")
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
