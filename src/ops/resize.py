"""Image resizing with a deterministic backward on CUDA.

``F.interpolate``'s CUDA backward (bilinear, bicubic, antialiased or not) and that of adaptive
average pooling accumulate with atomic adds: they are not deterministic, and under
``torch.use_deterministic_algorithms(True)`` (Lightning's ``deterministic=True``, our
``hardware.deterministic``) they raise. The CLIP and LPIPS losses resize
generated frames, so without this that mode could not train at all.

Every one of these resamplings is separable: out = M_h @ x @ M_w^T with one fixed matrix per axis.
``resize`` builds those matrices once per (size, mode, antialias) by resampling an identity basis
with ``F.interpolate`` itself (so the weights, edge handling and antialias support are exactly
PyTorch's) and then applies two matmuls, whose backward is deterministic. It is used whenever
deterministic algorithms are on and the input is on a GPU; otherwise it is ``F.interpolate``.

    y = resize(x, (224, 224), mode="bicubic", antialias=True)   # x [N,C,H,W] -> [N,C,224,224]
"""
from __future__ import annotations

import threading
from typing import Optional

import torch
import torch.nn.functional as F

_MODES = ("bilinear", "bicubic", "area")  # area: adaptive average pooling
_matrices: dict[tuple, torch.Tensor] = {}
_lock = threading.Lock()


def resize_matrix(size_in: int, size_out: int, mode: str, antialias: bool) -> torch.Tensor:
    """The [size_out, size_in] float64 CPU matrix of one axis of F.interpolate(align_corners=False)."""
    if mode == "area" and antialias:
        raise ValueError("antialias applies to bilinear and bicubic only")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if size_in < 1 or size_out < 1:
        raise ValueError(f"sizes must be >= 1, got {size_in} -> {size_out}")
    key = (size_in, size_out, mode, bool(antialias))
    with _lock:
        m = _matrices.get(key)
        if m is None:
            # image i of the basis is the unit impulse at input row i; resampling it along the height
            # gives column i of the matrix. The width is 2, kept as it is (an identity): with a width
            # of 1 the antialiased CPU kernels return a constant (torch 2.x), so 1 is avoided.
            basis = torch.eye(size_in, dtype=torch.float64).view(size_in, 1, size_in, 1).expand(-1, -1, -1, 2)
            cols = _interpolate(basis.contiguous(), (size_out, 2), mode, antialias)
            m = cols[:, 0, :, 0].t().contiguous()  # [size_out, size_in]
            _matrices[key] = m
    return m


def _interpolate(x: torch.Tensor, size: tuple[int, int], mode: str, antialias: bool) -> torch.Tensor:
    if mode == "area":  # == F.adaptive_avg_pool2d; takes no align_corners
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear", antialias: bool = False,
           deterministic: Optional[bool] = None) -> torch.Tensor:
    """F.interpolate(x, size, mode, align_corners=False, antialias) for x [N,C,H,W] -> [N,C,h,w];
    mode 'area' is F.adaptive_avg_pool2d(x, size).

    deterministic: use the matrix form (True), F.interpolate (False), or decide (None: the matrix
    form when torch's deterministic algorithms are on and x is on a CUDA device).
    """
    if x.ndim != 4:
        raise ValueError(f"resize expects [N,C,H,W], got {tuple(x.shape)}")
    h_out, w_out = int(size[0]), int(size[1])
    if deterministic is None:
        deterministic = x.is_cuda and torch.are_deterministic_algorithms_enabled()
    if not deterministic:
        return _interpolate(x, (h_out, w_out), mode, antialias)
    h_in, w_in = x.shape[-2:]
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    m_h = _matrix_on(h_in, h_out, mode, antialias, x.device, dtype)
    m_w_t = _matrix_on(w_in, w_out, mode, antialias, x.device, dtype).t()
    y = torch.matmul(torch.matmul(m_h, x.to(dtype)), m_w_t)  # [.., h_out, W] then [.., h_out, w_out]
    return y.to(x.dtype)


def _matrix_on(size_in: int, size_out: int, mode: str, antialias: bool, device: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
    """resize_matrix on ``device`` in ``dtype``, cached: a training step must not copy it to the GPU again."""
    key = (size_in, size_out, mode, bool(antialias), str(device), dtype)
    m = _matrices.get(key)
    if m is None:
        m = resize_matrix(size_in, size_out, mode, antialias).to(device=device, dtype=dtype)
        with _lock:
            _matrices[key] = m
    return m
