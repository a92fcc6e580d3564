"""Project an image into a StyleGAN2 generator's W / W+ space, or load a latent from a file.

Projection follows the optimisation of the official StyleGAN2-ADA projector (Karras et al. 2020),
re-derived here: start at the mean latent w_avg (estimated from ``num_w_avg_samples`` mapped z),
Adam on w (one w for every layer, or one per layer for W+), latent noise of scale
w_std * initial_noise_factor * max(0, 1 - t / noise_ramp)^2 in the early steps, learning rate with a
cosine ramp-down and a linear ramp-up, loss = lpips_weight * LPIPS + pixel_weight * MSE
(+ noise_reg_weight * multi-scale noise autocorrelation when the per-layer noise maps are optimised,
each map re-standardised after every step). The generator is never modified (noise optimisation
works on a copy of the synthesis network).
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from src.utils.errors import UserError


def _latent_dims(G: Any) -> tuple[int, int]:
    if isinstance(G, (tuple, list)):
        return int(G[0]), int(G[1])
    return int(G.num_ws), int(G.w_dim)


@torch.no_grad()
def w_statistics(G, num_samples: int = 10000, seed: int = 0, truncation_psi: float = 1.0,
                 device=None) -> tuple[torch.Tensor, float]:
    """Mean W latent [1,1,C] and the scalar spread w_std = sqrt(mean_i |w_i - w_avg|^2) of mapped z."""
    device = device or next(G.parameters()).device
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_samples, G.z_dim, generator=g).to(device)
    c = torch.zeros(num_samples, G.c_dim, device=device)
    w = G.mapping(z, c, truncation_psi=truncation_psi)[:, :1].float()  # [S,1,C]
    w_avg = w.mean(dim=0, keepdim=True)
    w_std = float(((w - w_avg).pow(2).sum() / num_samples).sqrt())
    return w_avg, w_std


def noise_regularisation(noises: list[torch.Tensor]) -> torch.Tensor:
    """Sum over maps and scales of the squared lag-1 autocorrelations (x and y) of each noise map,
    halving the map (2x2 average) until it is 8 px. noises: list of [H,W] or [1,1,H,W] tensors."""
    reg = noises[0].new_zeros(())
    for n in noises:
        x = n.reshape(1, 1, *n.shape[-2:])
        while True:
            reg = reg + (x * torch.roll(x, 1, dims=3)).mean().pow(2) + (x * torch.roll(x, 1, dims=2)).mean().pow(2)
            if x.shape[-1] <= 8:
                break
            x = F.avg_pool2d(x, 2)
    return reg


def _lr_at(t: float, lr: float, rampdown: float, rampup: float) -> float:
    ramp = min(1.0, (1.0 - t) / rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / rampup) if rampup > 0 else ramp
    return lr * ramp


def project(G, image: torch.Tensor, steps: int = 300, lr: float = 0.1, w_plus: bool = True,
            perceptual: Any = "auto", lpips_weight: float = 1.0, pixel_weight: float = 1.0,
            optimize_noise: bool = False, noise_reg_weight: float = 1e5, initial_noise_factor: float = 0.05,
            noise_ramp_length: float = 0.75, lr_rampdown_length: float = 0.25, lr_rampup_length: float = 0.05,
            num_w_avg_samples: int = 10000, noise_mode: str = "const", seed: int = 0,
            progress: bool = False) -> dict[str, Any]:
    """Find ws with G.synthesis(ws) ~ image.

    G: a Generator (mapping, synthesis, num_ws, w_dim, z_dim, c_dim). image [1,3,H,W] in [-1,1]
    (resized to G's resolution if needed). perceptual: an LPIPS-like module (x, y -> [N]), None
    (pixels only) or 'auto' (LPIPS-VGG16 when its weights are installed, else pixels only).
    Returns dict(ws [1,num_ws,w_dim], image [1,3,R,R], mse, psnr, lpips (when a perceptual module is used)).
    """
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise UserError(f"project expects one RGB image [1,3,H,W], got {tuple(image.shape)}")
    if steps < 1:
        raise UserError(f"projection steps must be >= 1, got {steps}")
    device = next(G.parameters()).device
    res = int(G.img_resolution)
    target = image.to(device).float()
    if target.shape[-2:] != (res, res):
        target = F.interpolate(target, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
    if perceptual == "auto":
        perceptual = _auto_perceptual()
    if perceptual is not None:
        if isinstance(perceptual, torch.nn.Module):
            perceptual = perceptual.to(device)
        if lpips_weight == 0 and pixel_weight == 0:
            raise UserError("both projection loss weights are zero")
    elif pixel_weight == 0:
        raise UserError("projection without a perceptual network needs pixel_weight > 0")

    gen = torch.Generator().manual_seed(seed)  # all randomness of the projection comes from here
    w_avg, w_std = w_statistics(G, num_w_avg_samples, seed, device=device)
    num_ws = G.num_ws
    w_opt = (w_avg.repeat(1, num_ws, 1) if w_plus else w_avg.clone()).requires_grad_(True)

    synthesis = G.synthesis
    noises: list[torch.Tensor] = []
    if optimize_noise:
        synthesis = copy.deepcopy(G.synthesis)  # the caller's generator keeps its noise maps
        for name, buf in synthesis.named_buffers():
            if name.endswith("noise_const"):
                buf.copy_(torch.randn(buf.shape, generator=gen).to(buf))
                buf.requires_grad_(True)
                noises.append(buf)
        noise_mode = "const"
    params = [w_opt] + noises
    opt = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999))

    # G is frozen here: no gradients accumulate in the caller's generator
    grad_state = [(p, p.requires_grad) for p in G.parameters()] + [(p, p.requires_grad) for p in synthesis.parameters()]
    for p, _ in grad_state:
        p.requires_grad_(False)
    try:
        out = _optimise(G, synthesis, target, w_opt, noises, opt, gen, steps, lr, w_plus, perceptual, lpips_weight,
                        pixel_weight, noise_reg_weight, initial_noise_factor, noise_ramp_length, lr_rampdown_length,
                        lr_rampup_length, w_std, noise_mode, progress, device)
    finally:
        for p, flag in grad_state:
            p.requires_grad_(flag)
    return out


def _optimise(G, synthesis, target, w_opt, noises, opt, gen, steps, lr, w_plus, perceptual, lpips_weight,
              pixel_weight, noise_reg_weight, initial_noise_factor, noise_ramp_length, lr_rampdown_length,
              lr_rampup_length, w_std, noise_mode, progress, device) -> dict[str, Any]:
    num_ws = G.num_ws
    iterator = range(steps)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="projecting", unit="step")
    for step in iterator:
        t = step / steps
        noise_scale = w_std * initial_noise_factor * max(0.0, 1.0 - t / noise_ramp_length) ** 2
        for group in opt.param_groups:
            group["lr"] = _lr_at(t, lr, lr_rampdown_length, lr_rampup_length)
        w_noise = torch.randn(w_opt.shape, generator=gen).to(device) * noise_scale
        ws = w_opt + w_noise
        ws = ws if w_plus else ws.repeat(1, num_ws, 1)
        synth = synthesis(ws, noise_mode=noise_mode)
        loss = pixel_weight * F.mse_loss(synth, target) if pixel_weight else synth.new_zeros(())
        if perceptual is not None and lpips_weight:
            loss = loss + lpips_weight * perceptual(synth, target).mean()
        if noises and noise_reg_weight:
            loss = loss + noise_reg_weight * noise_regularisation(noises)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n in noises:  # keep the noise maps standard normal
                n.sub_(n.mean()).div_(n.std().clamp_min(1e-8))

    with torch.no_grad():
        ws = (w_opt if w_plus else w_opt.repeat(1, num_ws, 1)).detach()
        # the caller renders with G (its own noise maps): return the result of exactly that when
        # noise was not optimised; with optimised noise, the image is rendered with those maps.
        final = synthesis(ws, noise_mode=noise_mode)
        mse = F.mse_loss(final, target).item()
        out = dict(ws=ws, image=final.detach(), mse=mse, psnr=10 * math.log10(4.0 / max(mse, 1e-12)))
        if perceptual is not None:
            out["lpips"] = float(perceptual(final, target).mean())
        if noises:
            out["noises"] = [n.detach().clone() for n in noises]
    return out


def _auto_perceptual():
    from src.networks.perceptual import LPIPS, weights_path

    return LPIPS("vgg", resize=256) if weights_path("vgg").is_file() else None


# --------------------------------------------------------------------------------- latent files
def _read_array(path: Path) -> Any:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            from src.utils.npy import load_npy

            return load_npy(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return _pick(dict(z), path)
        if suffix in (".pt", ".pth"):
            return _pick(torch.load(path, map_location="cpu", weights_only=True), path)
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return _pick(load_file(str(path)), path)
    except UserError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: cannot read latent ({first})") from None
    raise UserError(f"{path}: unsupported latent file type '{suffix}' (use .npy, .npz, .pt or .safetensors)")


def _pick(obj: Any, path: Path) -> Any:
    """A tensor/array, or the single entry / the 'ws'/'w'/'latent' entry of a dict."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj
    if isinstance(obj, dict):
        for key in ("ws", "w_plus", "w", "latent", "latents"):
            if key in obj:
                return obj[key]
        if len(obj) == 1:
            return next(iter(obj.values()))
        raise UserError(f"{path}: {len(obj)} arrays inside ({', '.join(map(str, list(obj)[:5]))}); "
                        "name the latent 'ws' or 'w'")
    raise UserError(f"{path}: holds a {type(obj).__name__}, not a latent array")


def latent_from_tensor(t: Any, G: Any, what: str = "latent") -> torch.Tensor:
    """A W [1,w_dim] / [w_dim] or W+ [1,num_ws,w_dim] / [num_ws,w_dim] array -> ws [1,num_ws,w_dim].

    G: the generator (or a (num_ws, w_dim) tuple) that fixes the expected shape; ``what`` names the
    latent in errors."""
    num_ws, w_dim = _latent_dims(G)
    if isinstance(t, np.ndarray):
        if t.dtype.kind not in "fiu":
            raise UserError(f"{what}: holds {t.dtype} values, not a latent array of numbers")
        t = t.astype(t.dtype.newbyteorder("="), copy=False)  # a file saved big-endian reads as any other
    t = torch.as_tensor(t)
    if not t.is_floating_point():
        raise UserError(f"{what}: latent must be floating point, got {t.dtype}")
    t = t.float()
    shape = tuple(t.shape)
    if shape in ((w_dim,), (1, w_dim)):
        ws = t.reshape(1, 1, w_dim).repeat(1, num_ws, 1)
    elif shape in ((num_ws, w_dim), (1, num_ws, w_dim)):
        ws = t.reshape(1, num_ws, w_dim)
    else:
        raise UserError(f"{what}: latent shape {list(shape)} does not fit the generator: expected W [1,{w_dim}] "
                        f"or W+ [1,{num_ws},{w_dim}]")
    if not torch.isfinite(ws).all():
        raise UserError(f"{what}: latent contains NaN or inf")
    return ws


def load_latent(path: str | os.PathLike, G: Any) -> torch.Tensor:
    """Read a latent file (.npy, .npz, .pt, .safetensors) -> ws [1,num_ws,w_dim]; see latent_from_tensor."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"latent file not found: {path}")
    return latent_from_tensor(_read_array(path), G, what=str(path))
