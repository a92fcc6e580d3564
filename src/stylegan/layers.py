"""Building blocks shared by the StyleGAN2-ADA generator and discriminator.

Argument checks that turn bad constructor arguments into one-line UserErrors, the maths of the
official ``torch_utils.ops`` layers written out in plain ``torch`` (``normalize_2nd_moment``,
``conv2d_resample``, ``modulated_conv2d`` and its deferred form whose epilogue ``bias_act`` fuses),
and the equalised-learning-rate ``FullyConnectedLayer`` and ``Conv2dLayer``. Parameter and buffer
names, shapes and run-time gains follow the official network pickles
of NVIDIA's StyleGAN2-ADA code, so weights can be copied by name. The only custom
ops are ``src.ops.bias_act`` and ``src.ops.upfirdn2d`` (CUDA kernels on CUDA tensors, ref on CPU).
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

ACT_GAIN = {name: spec.def_gain for name, spec in bias_act.ACTIVATIONS.items()}
# Device types on which use_fp16 blocks really compute in fp16 (CPU half convs are slow and gain
# nothing); tests add "cpu" to exercise the fp16 code path without a GPU. The blocks read it as
# ``layers.FP16_DEVICE_TYPES`` at call time, so replacing this attribute takes effect everywhere.
FP16_DEVICE_TYPES = {"cuda"}


def json_plain(value, what: str):
    """Deep-copy ``value`` into JSON types (dict/list/str/int/float/bool/None) or raise UserError."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UserError(f"{what}: keys must be strings, got {k!r}")
            out[k] = json_plain(v, f"{what}.{k}")
        return out
    if isinstance(value, (list, tuple)):
        return [json_plain(v, what) for v in value]
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


def check_keys(kwargs: dict, allowed, what: str) -> None:
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UserError(f"{what}: unsupported argument(s) {', '.join(unknown)}; "
                        f"supported: {', '.join(sorted(allowed))}")


def check_choice(value, choices, what: str) -> None:
    if value not in choices:
        raise UserError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_activation(act, what: str) -> None:
    check_choice(act, tuple(ACT_GAIN), what)


def log2_resolution(res, what: str) -> int:
    if not isinstance(res, (int, np.integer)) or res < 4 or (int(res) & (int(res) - 1)) != 0:
        raise UserError(f"{what} must be a power of two >= 4, got {res!r}")
    return int(round(math.log2(int(res))))


def positive_int(v, what: str, allow_zero: bool = False) -> int:
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
    x, dcoefs, noise = modulated_conv2d_deferred(x, weight, styles, noise=noise, up=up, padding=padding,
                                                 resample_filter=resample_filter, demodulate=demodulate,
                                                 fused_modconv=fused_modconv)
    if dcoefs is not None and noise is not None:
        return torch.addcmul(noise.to(x.dtype), x, dcoefs.to(x.dtype).reshape(n, -1, 1, 1))
    if dcoefs is not None:
        return x * dcoefs.to(x.dtype).reshape(n, -1, 1, 1)
    return x


def modulated_conv2d_deferred(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
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

    if kh == 1 and kw == 1 and up == 1 and padding == 0:
        # 1x1 (ToRGB): per-sample weights [N, O, I] and one batched GEMM, a single pass over x
        # (no x * styles pass); a channels-last x is read in place as [N, H*W, I] rows.
        w = weight[:, :, 0, 0].unsqueeze(0) * styles.reshape(n, 1, -1)
        if dcoefs is not None:
            w = w * dcoefs.reshape(n, -1, 1)
        w = w.to(x.dtype)
        height, width = x.shape[2:]
        y = None
        if x.is_contiguous():
            y = torch.bmm(w, x.reshape(n, in_ch, -1)).reshape(n, out_ch, height, width)
        elif x.is_contiguous(memory_format=torch.channels_last):
            rows = x.permute(0, 2, 3, 1).reshape(n, height * width, in_ch)
            y = torch.bmm(rows, w.transpose(1, 2)).reshape(n, height, width, out_ch).permute(0, 3, 1, 2)
        if y is not None:
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
        check_activation(activation, "FullyConnectedLayer activation")
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
        check_activation(activation, "Conv2dLayer activation")
        self.activation = activation
        self.up = int(up)
        self.down = int(down)
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", upfirdn2d.setup_filter(list(resample_filter)))
        self.padding = int(kernel_size) // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.act_gain = ACT_GAIN[activation]
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

