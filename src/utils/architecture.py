"""Whether a weights file and the architecture its sidecar describes fit, decided before any large
allocation: the stored tensor shapes come from the file's header, the network is built within an
allocation budget (src/networks/weights_file.py, small_clip.py, src/stylegan/nvidia_pickle.py)."""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

from src.utils.errors import UserError, first_line
from src.utils.io import check_input_file


def _lead(where: str) -> str:
    return f"{where}: " if where else ""


def stored_shapes(weights: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every tensor in a .safetensors file, from its header alone (nothing loaded)."""
    from safetensors import SafetensorError, safe_open

    path = check_input_file(weights, "weights")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a readable safetensors file: corrupt or truncated ({first_line(e)})") from None


def check_architecture(build: Callable[[], Any], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Build ``build()``'s module within an allocation budget and refuse it unless its state dict has
    exactly the names and shapes of ``shapes`` (what a file stores): every tensor made by size (empty,
    zeros, randn, ...) is sized on the meta device first, and the build stops once they add up to more
    than a few times what the file stores, so ``w_dim: 1000000`` ends here in one line, not in
    gigabytes. ``where`` (the sidecar) leads the message; errors of ``build`` itself pass."""
    import math

    import torch
    from torch.overrides import TorchFunctionMode

    sized = {torch.empty, torch.zeros, torch.ones, torch.full, torch.randn, torch.rand, torch.randint,
             torch.normal, torch.eye, torch.arange, torch.empty_strided}
    shaped_like_empty = {torch.randn, torch.rand}  # their meta kernels are slow to load; empty's are not
    stored = sum(math.prod(s) for s in shapes.values())
    budget = 4 * stored + (1 << 24)  # elements: the stored tensors, buffers and build-time temporaries

    class _OverBudget(Exception):
        pass

    class Budgeted(TorchFunctionMode):
        used = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = dict(kwargs or {})
            if func in sized:
                plain = {k: v for k, v in kwargs.items() if k not in ("device", "generator", "pin_memory")}
                probe = torch.empty(*args, **plain, device="meta") if func in shaped_like_empty \
                    else func(*args, **{**kwargs, "device": "meta"})
                Budgeted.used += probe.numel()
                if Budgeted.used > budget:
                    raise _OverBudget
            return func(*args, **kwargs)

    try:
        with Budgeted():
            own = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except _OverBudget:
        raise UserError(f"{_lead(where)}weights do not match the architecture: it describes a network of more "
                        f"than {budget:,} values, the file stores {stored:,}") from None
    except (RuntimeError, ValueError, OverflowError, ZeroDivisionError) as e:
        raise UserError(f"{_lead(where)}describes no network that can be built ({first_line(e)})") from None
    problems = [f"{k} has shape {list(shapes[k])}, expected {list(v)}" for k, v in own.items()
                if k in shapes and tuple(shapes[k]) != v]
    problems += [f"missing {k}" for k in own if k not in shapes] + [f"unexpected {k}" for k in shapes if k not in own]
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{_lead(where)}weights do not match the architecture: {'; '.join(problems[:3])}{more}")
