"""Which memory format the custom ops' kernels read a tensor in, and keep for their outputs.

A 4-D tensor whose strides say channels-last (NHWC) is read as such by the CUDA kernels (no copy to
NCHW) and gives channels-last outputs and gradients; everything else is read NCHW-contiguous. The
decision follows ATen's ``suggest_memory_format`` (which the C++ side calls), including its rule
for the ambiguous shapes with size-1 dimensions, so both sides always agree.
"""

from __future__ import annotations

import torch


def is_channels_last(x: torch.Tensor) -> bool:
    """True if x is 4-D and its strides are those of a channels-last tensor (ATen's rule)."""
    if x.ndim != 4 or x.layout != torch.strided:
        return False
    shape, strides = x.shape, x.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):  # C innermost, then W, H, N
        if shape[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False  # e.g. [N, 1, 1, 1]: NCHW by default
        smallest = strides[d] * (shape[d] if shape[d] > 1 else 1)
    return True


def kernel_format(x: torch.Tensor) -> torch.memory_format:
    """torch.channels_last for a channels-last 4-D x, else torch.contiguous_format."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


class _ChannelsLastGrad(torch.autograd.Function):
    """Identity whose incoming gradient is made channels-last (differentiable again)."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return _ChannelsLastGrad.apply(grad.contiguous(memory_format=torch.channels_last))


def channels_last_grad(x: torch.Tensor) -> torch.Tensor:
    """x itself, but its gradient (of any order) arrives channels-last: for the reference ops,
    whose PyTorch steps may hand back an NCHW gradient for a channels-last input."""
    return _ChannelsLastGrad.apply(x) if x.requires_grad else x
