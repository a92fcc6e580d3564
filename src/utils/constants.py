"""Small constant tensors made once per (values, dtype, device).

A ``torch.tensor(values, device='cuda')`` at every call is a copy from pageable host memory: the
host waits for it, and a CUDA graph cannot record it. The cached tensors are shared: never modify
one in place.
"""
from __future__ import annotations

import functools
from typing import Any

import torch

__all__ = ["device_constant", "clear_cache"]


def _frozen(values: Any) -> Any:
    if isinstance(values, (list, tuple)):
        return tuple(_frozen(v) for v in values)
    return float(values) if not isinstance(values, bool) else values


def device_constant(values: Any, dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype, device=device)``, made on the first call and reused."""
    return _make(_frozen(values), dtype, torch.device(device) if device is not None else torch.device("cpu"))


@functools.lru_cache(maxsize=256)
def _make(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):  # an ordinary tensor, usable by autograd even if first made in inference
        return torch.tensor(values, dtype=dtype, device=device)


def clear_cache() -> None:
    """Forget every constant made so far (tests)."""
    _make.cache_clear()
