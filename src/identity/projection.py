"""Identity-keeping projection of W+ offsets (inference only).

The animator's offsets move a face along directions that CLIP rewards; in a generator that couples
expression with identity, part of each offset also moves identity attributes (the mouth widens as it
opens). To first order an offset delta changes the identity readings r of a face by J delta, where
J = d r(G(w + delta)) / d delta at delta = 0 is the Jacobian of an identity network (the
identity-attribute reader) through the frozen generator. Removing the component of every offset that
lies in the row space of J,

    delta' = delta - beta * J^T (J J^T + lambda I)^-1 J delta,

keeps the offset's motion in the directions that leave the readings unchanged (the null-space edits
of low-rank GAN editing), one projection per face for every prompt and frame. beta in [0, 1] is the
strength (1: the whole row space), lambda a small ridge relative to the mean squared row norm.

Notation: N faces, A identity readings, L = num_ws, C = w_dim, T frames.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from src.utils.errors import UserError


def identity_jacobian(render: Callable[[torch.Tensor], torch.Tensor], reader: Callable[[torch.Tensor], torch.Tensor],
                      w: torch.Tensor, layer_mask: Optional[torch.Tensor] = None,
                      chunk: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [N, A, L*C], readings [N, A]): d reader(render(w))_a / d w for each face, zero on layers that
    cannot move, and the readings of the faces themselves (of render(w) clamped to [-1, 1]).

    render: ws [M, L, C] -> images [M, 3, H, W]; reader: images -> [M, A]; w [N, L, C];
    layer_mask [L, 1] (1 where offsets may move; default all). Each face is repeated A times and copy
    a back-propagates reading a alone; one batched backward per ``chunk`` such copies (default: 2 on
    a CPU, where larger passes are no faster and each copy holds about 110 MB of activations at
    128 px; 4 faces' worth on a GPU).
    """
    if w.ndim != 3:
        raise UserError(f"identity_jacobian needs w [N, L, C], got {tuple(w.shape)}")
    n, num_ws, w_dim = w.shape
    w = w.detach()
    with torch.no_grad():
        readings = reader(render(w).clamp(-1, 1)).float()
    a = readings.shape[1]
    per_pass = max(1, int(chunk)) if chunk else (4 * a if w.device.type == "cuda" else 2)
    rows = []
    # also under torch.inference_mode() (Lightning's validation and test): leave it for the backward
    # passes, with w cloned out of it (an inference tensor cannot take part in autograd)
    with torch.inference_mode(False), torch.enable_grad():
        w = w.clone()
        face = torch.arange(n, device=w.device).repeat_interleave(a)       # copy i -> its face ...
        reading = torch.arange(a, device=w.device).repeat(n)                 # ... and its reading
        for start in range(0, n * a, per_pass):
            f, r = face[start:start + per_pass], reading[start:start + per_pass]
            rep = w[f].clone().requires_grad_(True)                           # [m, L, C]
            out = reader(render(rep)).float()                                 # [m, A]
            (grad,) = torch.autograd.grad(out.gather(1, r[:, None]).sum(), rep)
            rows.append(grad)
    jac = torch.cat(rows).view(n, a, num_ws, w_dim)
    if layer_mask is not None:
        jac = jac * layer_mask.to(jac.device, jac.dtype).view(1, 1, num_ws, 1)
    return jac.flatten(2), readings


def project_offsets(offsets: torch.Tensor, jacobian: torch.Tensor, strength: float = 1.0,
                    ridge: float = 1e-3, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Remove ``strength`` of each offset's component in the row space of its face's Jacobian.

    offsets [N, T, L, C]; jacobian [N, A, L*C]; rows [N, A] bool: the readings to keep (default all;
    a reading the face cannot show, such as the frame colour of absent glasses, is left out).
    Returns offsets [N, T, L, C] (float32 arithmetic; the input dtype is kept).
    """
    if not 0.0 <= strength <= 1.0:
        raise UserError(f"identity projection strength must be in [0, 1], got {strength}")
    n, t = offsets.shape[:2]
    if jacobian.ndim != 3 or jacobian.shape[0] != n or jacobian.shape[2] != offsets[0, 0].numel():
        raise UserError(f"jacobian {tuple(jacobian.shape)} does not fit offsets {tuple(offsets.shape)}")
    if strength == 0.0:
        return offsets
    jac = jacobian.float()
    if rows is not None:
        jac = jac * rows.to(jac.device, jac.dtype)[:, :, None]
    d = offsets.float().reshape(n, t, -1)                                    # [N, T, D]
    gram = jac @ jac.transpose(1, 2)                                         # [N, A, A]
    a = gram.shape[-1]
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1e-12)          # mean squared row norm
    gram = gram + (ridge * scale)[:, None, None] * torch.eye(a, device=gram.device)
    coef = torch.linalg.solve(gram, jac @ d.transpose(1, 2))                 # [N, A, T]
    out = d - strength * (jac.transpose(1, 2) @ coef).transpose(1, 2)
    return out.reshape(offsets.shape).to(offsets.dtype)
