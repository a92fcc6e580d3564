"""Upsample -> pad -> FIR filter -> downsample on NCHW tensors (StyleGAN2-ADA semantics).

Conventions (1D description; the same holds independently along x and y):
  1. upsample by ``up``: zero insertion, ``xu[k*up] = x[k]``, other samples 0, length ``H*up``;
  2. pad by ``(p0, p1)`` zeros on each side (negative = crop), length ``H*up + p0 + p1``;
  3. FIR filter: TRUE convolution with ``f`` (valid part only), i.e. correlation with the flipped
     filter; with ``flip_filter=True`` it is a correlation with ``f`` as given;
  4. downsample by ``down``: keep samples ``0, down, 2*down, ...``.
Output size: ``(H*up + p0 + p1 - fh) // down + 1``.

Filter: 2D ``[fh, fw]`` (non-separable) or 1D ``[fw]`` (separable: applied along x, then y).
``gain``: the filter is scaled by ``gain ** (f.ndim / 2)``, i.e. the 2D filter by ``gain`` and a
separable 1D filter by ``sqrt(gain)`` per axis, so the total gain is ``gain`` in both cases.
Use ``setup_filter`` to build normalised filters; ``upsample2d``/``downsample2d``/``filter2d``
choose the padding so that the output is exactly ``H*up``, ``H/down``, ``H``.

Memory format: a channels-last (NHWC) x gives a channels-last output, and its gradients are
channels-last too, in both implementations; the CUDA kernels read it in place (no NCHW copy).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from src.ops import policy
from src.ops.memory_format import channels_last_grad, kernel_format
from src.utils.errors import UserError

IntOr2 = Union[int, Sequence[int]]
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _parse_scaling(scaling: IntOr2, what: str):
    if isinstance(scaling, (int, np.integer)):
        scaling = [int(scaling), int(scaling)]
    try:
        sx, sy = (int(s) for s in scaling)
    except (TypeError, ValueError):
        raise UserError(f"upfirdn2d: {what} must be an int or a pair (x, y), got {scaling!r}") from None
    if sx < 1 or sy < 1:
        raise UserError(f"upfirdn2d: {what} factors must be >= 1, got {(sx, sy)}")
    return sx, sy


def _parse_padding(padding: IntOr2):
    """int p -> (p, p, p, p); (px, py) -> (px, px, py, py); (x0, x1, y0, y1) as is."""
    if isinstance(padding, (int, np.integer)):
        padding = [int(padding), int(padding)]
    padding = [int(p) for p in padding]
    if len(padding) == 2:
        px, py = padding
        padding = [px, px, py, py]
    if len(padding) != 4:
        raise UserError(f"upfirdn2d: padding must be an int, (px, py) or (x0, x1, y0, y1), got {padding}")
    return tuple(padding)


def _get_filter_size(f: Optional[torch.Tensor]):
    """(fw, fh) of a 2D [fh, fw] or separable 1D [fw] filter; None -> (1, 1)."""
    if f is None:
        return 1, 1
    if not isinstance(f, torch.Tensor) or f.ndim not in (1, 2):
        raise UserError(f"upfirdn2d: filter must be a 1D or 2D tensor, got "
                        f"{tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__}")
    fw = f.shape[-1]
    fh = f.shape[0]
    if fw < 1 or fh < 1:
        raise UserError(f"upfirdn2d: filter must not be empty, got shape {tuple(f.shape)}")
    return fw, fh


def setup_filter(f, normalize: bool = True, flip_filter: bool = False, gain: float = 1,
                 separable: Optional[bool] = None, device: torch.device = torch.device("cpu")
                 ) -> torch.Tensor:
    """Build a float32 FIR filter tensor for upfirdn2d.

    Args:
        f: None (-> [1, 1] box), scalar, 1D list/array [fw] or 2D [fh, fw].
        normalize: divide by the sum (unit DC gain).
        flip_filter: flip along every axis.
        gain: multiply by ``gain ** (ndim / 2)`` (so the overall 2D gain is ``gain``).
        separable: keep a 1D filter 1D (separable); default: True for 1D filters with >= 8 taps
            (as StyleGAN2-ADA), else the 1D filter becomes its outer product [fw, fw].
        device: device of the returned tensor.
    Returns:
        [fw] (separable) or [fh, fw] float32 tensor.
    """
    if f is None:
        f = 1
    f = torch.as_tensor(f, dtype=torch.float32)
    if f.ndim not in (0, 1, 2) or f.numel() == 0:
        raise UserError(f"setup_filter: filter must be a non-empty scalar, 1D or 2D array, got shape "
                        f"{tuple(f.shape)}")
    if f.ndim == 0:
        f = f[None]
    if separable is None:
        separable = f.ndim == 1 and f.numel() >= 8
    if f.ndim == 1 and not separable:
        f = torch.outer(f, f)
    if f.ndim != (1 if separable else 2):
        raise UserError(f"setup_filter: separable={separable} needs a {'1D' if separable else '2D'} "
                        f"filter, got shape {tuple(f.shape)}")
    if normalize:
        total = f.sum()
        if total == 0:
            raise UserError("setup_filter: cannot normalise a filter whose taps sum to 0")
        f = f / total
    if flip_filter:
        f = f.flip(list(range(f.ndim)))
    f = f * (gain ** (f.ndim / 2))
    return f.to(device=device)


def _check_inputs(x, f):
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"upfirdn2d: x must be a 4D [N, C, H, W] tensor, got "
                        f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise UserError(f"upfirdn2d: x must be floating point, got {x.dtype}")
    if f is None:
        f = torch.ones([1, 1], dtype=torch.float32, device=x.device)
    _get_filter_size(f)
    if not f.is_floating_point():
        raise UserError(f"upfirdn2d: filter must be floating point, got {f.dtype}")
    if f.device != x.device:
        raise UserError(f"upfirdn2d: filter is on {f.device} but x is on {x.device}")
    return f


def _out_size(n: int, up: int, down: int, p0: int, p1: int, fsize: int, axis: str) -> int:
    span = n * up + p0 + p1
    if span < fsize:
        raise UserError(f"upfirdn2d: along {axis}, size {n}*up{up} + padding ({p0}, {p1}) = {span} "
                        f"is smaller than the filter ({fsize} taps)")
    return (span - fsize) // down + 1


def upfirdn2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOr2 = 1, down: IntOr2 = 1,
              padding: IntOr2 = 0, flip_filter: bool = False, gain: float = 1,
              impl: str = "auto") -> torch.Tensor:
    """Upsample, pad, FIR-filter, downsample (see module docstring for the exact conventions).

    Args:
        x: [N, C, H, W] floating tensor.
        f: [fh, fw] or separable [fw] float filter (or None = identity [1, 1]); never trained
            through the CUDA path (a filter that requires grad makes the call use ref).
        up, down: int or (x, y) integer factors >= 1.
        padding: int, (px, py) or (x0, x1, y0, y1); negative values crop.
        flip_filter: correlation with f instead of convolution.
        gain: overall signal gain (filter scaled by gain ** (f.ndim / 2)).
        impl: 'auto' | 'ref' | 'cuda'.
    Returns:
        [N, C, (H*upy + py0 + py1 - fh) // downy + 1, (W*upx + px0 + px1 - fw) // downx + 1].
    """
    f = _check_inputs(x, f)
    upx, upy = _parse_scaling(up, "up")
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    _out_size(x.shape[2], upy, downy, py0, py1, fh, "y")
    _out_size(x.shape[3], upx, downx, px0, px1, fw, "x")
    plugin = policy.resolve(impl, x, f)
    if (plugin is None or f.requires_grad or x.dtype not in _CUDA_DTYPES or x.numel() == 0):
        return _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, float(gain))
    p = _Params(plugin, upx, upy, downx, downy, px0, px1, py0, py1, bool(flip_filter), float(gain))
    return _UpFirDn2dCuda.apply(x, f, p)


def _upfirdn2d_ref(x, f, upx, upy, downx, downy, px0, px1, py0, py1, flip_filter, gain):
    """Pure PyTorch implementation: [N, C, H, W] -> [N, C, OH, OW] (autograd of any order).

    A channels-last x is worked on as such and gives a dense channels-last result."""
    n, c, h, w = x.shape
    fmt = kernel_format(x)
    if fmt == torch.channels_last:
        x = channels_last_grad(x)
    # 1. zero insertion: view each sample as a 1x1 block, pad it to up x up, flatten back.
    if (upx > 1 or upy > 1) and fmt == torch.channels_last:
        x = x.permute(0, 2, 3, 1).reshape(n, h, 1, w, 1, c)  # a view of the NHWC storage
        x = F.pad(x, [0, 0, 0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, h * upy, w * upx, c).permute(0, 3, 1, 2)
    elif upx > 1 or upy > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, upx - 1, 0, 0, 0, upy - 1])
        x = x.reshape(n, c, h * upy, w * upx)
    # 2. pad with zeros (positive part), then crop (negative part).
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # 3. FIR filter as a depthwise conv2d (= correlation, hence the flip for a true convolution).
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        weight = f[None, None].expand(c, 1, *f.shape)
        x = F.conv2d(x, weight, groups=c)
    else:
        x = F.conv2d(x, f[None, None, None, :].expand(c, 1, 1, f.shape[0]), groups=c)
        x = F.conv2d(x, f[None, None, :, None].expand(c, 1, f.shape[0], 1), groups=c)
    # 4. keep every down-th sample.
    x = x[:, :, ::downy, ::downx]
    if fmt == torch.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)  # no copy unless decimated or reordered
    return x


# ----------------------------------------------------------------------------------------------
# CUDA path. Backward of upfirdn2d is again an upfirdn2d: flipped filter, up <-> down and
# padding (fw - p0 - 1, W*up - OW*down + p0 - up + 1) per axis (derived in the module tests).
# The backward calls the same Function, so gradients of any order are available.
# ----------------------------------------------------------------------------------------------

class _Params(NamedTuple):
    plugin: object
    upx: int
    upy: int
    downx: int
    downy: int
    px0: int
    px1: int
    py0: int
    py1: int
    flip: bool
    gain: float


def _grad_params(p: _Params, in_h: int, in_w: int, out_h: int, out_w: int, fw: int, fh: int) -> _Params:
    return _Params(
        p.plugin, p.downx, p.downy, p.upx, p.upy,
        fw - p.px0 - 1, in_w * p.upx - out_w * p.downx + p.px0 - p.upx + 1,
        fh - p.py0 - 1, in_h * p.upy - out_h * p.downy + p.py0 - p.upy + 1,
        not p.flip, p.gain)


def _launch(x: torch.Tensor, f: torch.Tensor, p: _Params) -> torch.Tensor:
    """One kernel call: [N, C, H, W] -> [N, C, OH, OW] (no autograd); channels-last in, channels-last out."""
    # The kernel takes a 2D correlation filter; a separable [fw] filter becomes its outer product
    # (same result; the per-axis gain sqrt(gain) multiplies to gain), formed in the kernel's precision.
    f = f.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    f2 = (torch.outer(f, f) if f.ndim == 1 else f) * p.gain
    if not p.flip:
        f2 = f2.flip([0, 1])  # true convolution = correlation with the flipped filter
    x = x.contiguous(memory_format=kernel_format(x))
    return p.plugin.upfirdn2d(x, f2.contiguous(), p.upx, p.upy, p.downx, p.downy,
                              p.px0, p.px1, p.py0, p.py1)


class _UpFirDn2dCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, f, p: _Params):
        ctx.p = p
        ctx.in_hw = (x.shape[2], x.shape[3])
        ctx.fmt = kernel_format(x)  # dx gets x's memory format
        ctx.save_for_backward(f)
        return _launch(x, f, p)

    @staticmethod
    def backward(ctx, dy):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (f,) = ctx.saved_tensors
        dy = dy.contiguous(memory_format=ctx.fmt)
        fw, fh = _get_filter_size(f)
        gp = _grad_params(ctx.p, ctx.in_hw[0], ctx.in_hw[1], dy.shape[2], dy.shape[3], fw, fh)
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            return _UpFirDn2dCuda.apply(dy, f, gp), None, None
        return _launch(dy, f, gp), None, None  # plain backward: no extra autograd node


# ----------------------------------------------------------------------------------------------
# Helpers with the padding that gives exact output sizes.
# ----------------------------------------------------------------------------------------------

def filter2d(x: torch.Tensor, f: Optional[torch.Tensor], padding: IntOr2 = 0, flip_filter: bool = False,
             gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """FIR filter keeping the size: [N, C, H, W] -> [N, C, H + py0 + py1, W + px0 + px1]."""
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + fw // 2, px1 + (fw - 1) // 2, py0 + fh // 2, py1 + (fh - 1) // 2]
    return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain, impl=impl)


def upsample2d(x: torch.Tensor, f: Optional[torch.Tensor], up: IntOr2 = 2, padding: IntOr2 = 0,
               flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """Upsample with FIR interpolation: [N, C, H, W] -> [N, C, H*upy + py0 + py1, W*upx + px0 + px1].

    The filter gain is multiplied by upx*upy to make up for the inserted zeros (so a constant
    image stays constant with a normalised filter and gain=1).
    """
    upx, upy = _parse_scaling(up, "up")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw + upx - 1) // 2, px1 + (fw - upx) // 2,
         py0 + (fh + upy - 1) // 2, py1 + (fh - upy) // 2]
    return upfirdn2d(x, f, up=(upx, upy), padding=p, flip_filter=flip_filter,
                     gain=gain * upx * upy, impl=impl)


def downsample2d(x: torch.Tensor, f: Optional[torch.Tensor], down: IntOr2 = 2, padding: IntOr2 = 0,
                 flip_filter: bool = False, gain: float = 1, impl: str = "auto") -> torch.Tensor:
    """FIR-filtered downsampling: [N, C, H, W] -> [N, C, (H + py0 + py1) // downy, (W + px0 + px1) // downx]."""
    downx, downy = _parse_scaling(down, "down")
    px0, px1, py0, py1 = _parse_padding(padding)
    fw, fh = _get_filter_size(f)
    p = [px0 + (fw - downx + 1) // 2, px1 + (fw - downx) // 2,
         py0 + (fh - downy + 1) // 2, py1 + (fh - downy) // 2]
    return upfirdn2d(x, f, down=(downx, downy), padding=p, flip_filter=flip_filter, gain=gain, impl=impl)
