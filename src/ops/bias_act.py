"""Fused bias + activation + gain + clamp (StyleGAN2-ADA semantics).

    y = clamp(act(x + b) * gain, -clamp, clamp)

or, with the optional modulated-conv epilogue (x [N, C, *spatial], dim=1):

    y = clamp(act(x * scale[n, c] + addend + b) * gain, -clamp, clamp)

``b`` (shape [x.shape[dim]]) is broadcast along ``dim``. ``gain=None`` uses the activation's
default gain, ``alpha=None`` its default alpha (only lrelu uses alpha). ``clamp=None`` or a
negative value disables clamping. Both implementations support autograd incl. double backward
(R1 / path-length regularisation); the CUDA one supports at most second order. With ``scale`` /
``addend`` the CUDA path fuses them into one forward kernel when no gradient is needed, and
otherwise applies them with ``torch.addcmul`` before the differentiable fused kernel.

Memory format: a channels-last (NHWC) 4-D x with ``dim=1`` is read in place by the CUDA kernels,
and y and the gradients keep that format (the reference keeps it through its elementwise ops).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from src.ops import policy
from src.ops.memory_format import kernel_format
from src.utils.errors import UserError


class ActSpec(NamedTuple):
    name: str
    def_alpha: float
    def_gain: float
    cuda_idx: int  # activation id understood by the CUDA kernel
    has_2nd_grad: bool  # nonzero second derivative (needs the order-2 kernel)


_SQRT2 = math.sqrt(2.0)
# Default gains as in StyleGAN2-ADA (relu, lrelu and swish sqrt(2); the rest 1).
ACTIVATIONS = {
    "linear": ActSpec("linear", 0.0, 1.0, 0, False),
    "relu": ActSpec("relu", 0.0, _SQRT2, 1, False),
    "lrelu": ActSpec("lrelu", 0.2, _SQRT2, 2, False),
    "tanh": ActSpec("tanh", 0.0, 1.0, 3, True),
    "sigmoid": ActSpec("sigmoid", 0.0, 1.0, 4, True),
    "elu": ActSpec("elu", 0.0, 1.0, 5, True),
    "selu": ActSpec("selu", 0.0, 1.0, 6, True),
    "softplus": ActSpec("softplus", 0.0, 1.0, 7, True),
    "swish": ActSpec("swish", 0.0, _SQRT2, 8, True),
}

_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _resolve_params(x, b, dim, act, alpha, gain, clamp):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise UserError(f"bias_act: x must be a floating-point tensor, got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else x.dtype}")
    if act not in ACTIVATIONS:
        raise UserError(f"bias_act: unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    if x.ndim == 0:
        raise UserError("bias_act: x must have at least one dimension")
    if not -x.ndim <= dim < x.ndim:
        raise UserError(f"bias_act: dim={dim} out of range for x of shape {tuple(x.shape)}")
    dim = dim % x.ndim
    if b is not None:
        if not isinstance(b, torch.Tensor) or b.ndim != 1 or b.shape[0] != x.shape[dim]:
            shape = tuple(b.shape) if isinstance(b, torch.Tensor) else type(b).__name__
            raise UserError(f"bias_act: b must have shape [{x.shape[dim]}] (x.shape[{dim}]), got {shape}")
        if b.device != x.device:
            raise UserError(f"bias_act: b is on {b.device} but x is on {x.device}")
    spec = ACTIVATIONS[act]
    alpha = float(alpha if alpha is not None else spec.def_alpha)
    gain = float(gain if gain is not None else spec.def_gain)
    clamp = float(clamp if clamp is not None else -1)
    return dim, spec, alpha, gain, clamp


def _describe(t) -> str:
    return f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__


def _check_epilogue(x, dim, scale, addend) -> None:
    """UserError unless scale [N, C] / addend ([*spatial], [1|N, 1|C, *spatial]) fit x [N, C, *spatial]."""
    if scale is None and addend is None:
        return
    if x.ndim < 2 or dim != 1:
        raise UserError(f"bias_act: scale/addend need x of shape [N, C, *spatial] with dim=1, got x "
                        f"{tuple(x.shape)} and dim={dim}")
    n, c, spatial = x.shape[0], x.shape[1], tuple(x.shape[2:])
    if scale is not None:
        if not isinstance(scale, torch.Tensor) or not scale.is_floating_point() or tuple(scale.shape) != (n, c):
            raise UserError(f"bias_act: scale must be a floating-point tensor of shape [{n}, {c}] (x.shape[:2]), "
                            f"got {_describe(scale)}")
        if scale.device != x.device:
            raise UserError(f"bias_act: scale is on {scale.device} but x is on {x.device}")
    if addend is not None:
        ok = isinstance(addend, torch.Tensor) and addend.is_floating_point() and (
            tuple(addend.shape) == spatial
            or (addend.ndim == x.ndim and addend.shape[0] in (1, n) and addend.shape[1] in (1, c)
                and tuple(addend.shape[2:]) == spatial))
        if not ok:
            dims = ", ".join(map(str, spatial))
            raise UserError(f"bias_act: addend must be a floating-point tensor of shape [{dims}] or "
                            f"[1|{n}, 1|{c}{', ' if dims else ''}{dims}] for x {tuple(x.shape)}, got "
                            f"{_describe(addend)}")
        if addend.device != x.device:
            raise UserError(f"bias_act: addend is on {addend.device} but x is on {x.device}")


def _apply_epilogue_ref(x, scale, addend):
    """x * scale[n, c] + addend in x.dtype, exactly as ``modulated_conv2d`` computes it (one
    addcmul when both are given). x [N, C, *spatial] -> same shape and dtype."""
    if scale is not None:
        scale = scale.to(x.dtype).reshape(*scale.shape, *([1] * (x.ndim - 2)))
        if addend is not None:
            return torch.addcmul(addend.to(x.dtype), x, scale)
        return x * scale
    if addend is not None:
        return x + addend.to(x.dtype)
    return x


def _act_ref(z: torch.Tensor, act: str, alpha: float) -> torch.Tensor:
    if act == "linear":
        return z
    if act == "relu":
        return F.relu(z)
    if act == "lrelu":
        return F.leaky_relu(z, alpha)
    if act == "tanh":
        return torch.tanh(z)
    if act == "sigmoid":
        return torch.sigmoid(z)
    if act == "elu":
        return F.elu(z)
    if act == "selu":
        return F.selu(z)
    if act == "softplus":
        return F.softplus(z)
    if act == "swish":
        return torch.sigmoid(z) * z
    raise AssertionError(act)


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    """Pure PyTorch: x [..] -> y [..] (same shape/dtype)."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    x = _act_ref(x, act, alpha)
    if gain != 1:
        x = x * gain
    if clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def bias_act(x: torch.Tensor, b: Optional[torch.Tensor] = None, dim: int = 1, act: str = "linear",
             alpha: Optional[float] = None, gain: Optional[float] = None,
             clamp: Optional[float] = None, impl: str = "auto", *,
             scale: Optional[torch.Tensor] = None, addend: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Fused ``clamp(act(x * scale + addend + b) * gain)`` (scale / addend optional).

    Args:
        x: [..., C, ...] floating tensor (any rank); ``C = x.shape[dim]``.
        b: optional bias [C] (cast to x.dtype).
        dim: the dimension of x that ``b`` runs along.
        act: linear | relu | lrelu | tanh | sigmoid | elu | selu | softplus | swish.
        alpha: lrelu negative slope (default 0.2); ignored by the other activations.
        gain: output scale (default: sqrt(2) for relu/lrelu/swish, else 1).
        clamp: clamp output to [-clamp, clamp]; None or negative = no clamp.
        impl: 'auto' | 'ref' | 'cuda' (see src.ops.policy).
        scale: optional per-sample, per-channel multiplier [N, C] for x [N, C, *spatial] (dim must
            be 1), applied first (the demodulation coefficients of a modulated conv).
        addend: optional [*spatial], [1|N, 1|C, *spatial] tensor added after scaling and before
            the bias (the per-pixel noise). Both are cast to x.dtype, as ``torch.addcmul(addend,
            x, scale)`` in x.dtype would be.
    Returns:
        y with the shape and dtype of x.
    """
    dim, spec, alpha, gain, clamp = _resolve_params(x, b, dim, act, alpha, gain, clamp)
    _check_epilogue(x, dim, scale, addend)
    plugin = policy.resolve(impl, x, b, scale, addend)
    if plugin is None or x.dtype not in _CUDA_DTYPES or x.numel() == 0:
        return _bias_act_ref(_apply_epilogue_ref(x, scale, addend), b, dim, act, alpha, gain, clamp)
    if scale is None and addend is None:
        return _bias_act_cuda(plugin, x, b, dim, spec, alpha, gain, clamp)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, b, scale, addend))
    if needs_grad:
        # Training / regularisation: the autograd graph of the unfused formula (addcmul, then the
        # differentiable bias_act kernel), so backward and double backward are those of the ref.
        return _bias_act_cuda(plugin, _apply_epilogue_ref(x, scale, addend), b, dim, spec, alpha, gain, clamp)
    return _bias_act_epilogue_cuda(plugin, x, b, scale, addend, spec, alpha, gain, clamp)


# ----------------------------------------------------------------------------------------------
# CUDA path. The kernel computes from (g, x, b):
#   order 0: y            = clamp(act(z) * gain)                     (g unused)
#   order 1: g * dy/dz    = g * act'(z) * gain * m                   m = 1[|act(z)*gain| <= clamp]
#   order 2: g * d2y/dz2  = g * act''(z) * gain * m
# with z = x + b recomputed in the kernel, so nothing but x and b is saved for backward.
# ----------------------------------------------------------------------------------------------

def _sum_to_bias(t: torch.Tensor, dim: int) -> torch.Tensor:
    dims = [i for i in range(t.ndim) if i != dim]
    return t.sum(dims) if dims else t


class _Ctx(NamedTuple):
    plugin: object
    dim: int
    act_idx: int
    has_2nd: bool
    alpha: float
    gain: float
    clamp: float
    fmt: torch.memory_format  # the kernels' layout of x, g and y (channels-last or contiguous)


def _kernel_format(x: torch.Tensor, dim: int) -> torch.memory_format:
    """Channels-last for a channels-last 4-D x with the bias along dim 1, else contiguous."""
    return kernel_format(x) if dim == 1 else torch.contiguous_format


def _run(c: _Ctx, g, x, b, order):
    empty = x.new_empty([0])
    return c.plugin.bias_act(x, b if b is not None else empty, g if g is not None else empty,
                             c.dim, c.act_idx, order, c.alpha, c.gain, c.clamp)


class _BiasActCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, b, c: _Ctx):
        x = x.contiguous(memory_format=c.fmt)
        bb = b.to(x.dtype).contiguous() if b is not None else None
        ctx.c = c
        ctx.has_b = b is not None
        ctx.b_dtype = b.dtype if b is not None else None
        ctx.save_for_backward(x, bb)
        return _run(c, None, x, bb, 0)

    @staticmethod
    def backward(ctx, dy):
        x, b = ctx.saved_tensors
        c = ctx.c
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            dx = _BiasActGrad.apply(dy, x, b, c)
        else:  # plain backward: skip the extra autograd.Function (Python overhead)
            dx = _run(c, dy.to(x.dtype).contiguous(memory_format=c.fmt), x, b, 1)
        db = _sum_to_bias(dx, c.dim).to(ctx.b_dtype) if ctx.has_b and ctx.needs_input_grad[1] else None
        return (dx if ctx.needs_input_grad[0] else None), db, None


class _BiasActGrad(torch.autograd.Function):
    """dx = dy * act'(x+b) * gain * mask; differentiable once more."""

    @staticmethod
    def forward(ctx, dy, x, b, c: _Ctx):
        ctx.c = c
        dy = dy.to(x.dtype).contiguous(memory_format=c.fmt)
        ctx.save_for_backward(dy, x, b)
        return _run(c, dy, x, b, 1)

    @staticmethod
    def backward(ctx, ddx):
        dy, x, b = ctx.saved_tensors
        c = ctx.c
        d_dy = _BiasActGrad.apply(ddx, x, b, c) if ctx.needs_input_grad[0] else None
        d_x = d_b = None
        if c.has_2nd and (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]):
            d_z = _BiasAct2ndGrad.apply(ddx * dy, x, b, c)
            d_x = d_z if ctx.needs_input_grad[1] else None
            d_b = _sum_to_bias(d_z, c.dim) if (b is not None and ctx.needs_input_grad[2]) else None
        return d_dy, d_x, d_b, None


class _BiasAct2ndGrad(torch.autograd.Function):
    """g * act''(x+b) * gain * mask (third-order gradients are not supported)."""

    @staticmethod
    def forward(ctx, g, x, b, c: _Ctx):
        return _run(c, g.contiguous(memory_format=c.fmt), x, b, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _):
        raise RuntimeError("bias_act (CUDA): gradients of order 3 are not supported; use impl='ref'")


def _bias_act_cuda(plugin, x, b, dim, spec, alpha, gain, clamp):
    if b is not None and b.dtype not in _CUDA_DTYPES:
        raise UserError(f"bias_act: unsupported bias dtype {b.dtype}")
    c = _Ctx(plugin, dim, spec.cuda_idx, spec.has_2nd_grad, alpha, gain, clamp, _kernel_format(x, dim))
    return _BiasActCuda.apply(x, b, c)


def _bias_act_epilogue_cuda(plugin, x, b, scale, addend, spec, alpha, gain, clamp):
    """Forward-only fused kernel: x [N, C, *spatial], scale [N, C] or None, addend [*spatial] or
    [1|N, 1|C, *spatial] or None -> y [N, C, *spatial] (x.dtype, contiguous or channels-last as x).
    No autograd graph."""
    if b is not None and b.dtype not in _CUDA_DTYPES:
        raise UserError(f"bias_act: unsupported bias dtype {b.dtype}")
    fmt = _kernel_format(x, 1)
    x = x.contiguous(memory_format=fmt)
    empty = x.new_empty([0])
    # Operands in x.dtype, as the reference's addcmul sees them; the kernel reads the addend as
    # [1|N, 1|C, H*W] rows (stride 0 over broadcast dims): contiguous rows for NCHW, any strides
    # (a view where possible) for channels-last.
    shape_addend = (lambda t: t) if fmt == torch.channels_last else (lambda t: t.contiguous())
    bb = b.to(x.dtype).contiguous() if b is not None else empty
    ss = scale.to(x.dtype).contiguous() if scale is not None else empty
    if addend is None:
        aa = empty
    elif addend.ndim == x.ndim:
        aa = shape_addend(addend.to(x.dtype).reshape(addend.shape[0], addend.shape[1], -1))
    else:  # [*spatial]: one map for every sample and channel
        aa = shape_addend(addend.to(x.dtype).reshape(1, 1, -1))
    return plugin.bias_act_epilogue(x, bb, ss, aa, spec.cuda_idx, alpha, gain, clamp)
