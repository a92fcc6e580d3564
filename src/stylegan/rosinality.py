"""Load rosinality/stylegan2-pytorch checkpoints (``*.pt``) into our Generator.

Both layouts (docs section 2): convert_weight.py ``{'g_ema', 'latent_avg', ...}`` and train.py
``{'g', 'd', 'g_ema', 'g_optim', 'd_optim', 'args', 'ada_aug_p'}`` (argparse.Namespace args,
no latent_avg). Loading is ``torch.load(weights_only=True)`` with only argparse.Namespace
allow-listed. Hyper-parameters are inferred from the g_ema keys and shapes.

Why the mapping is a plain copy (up to reshapes): rosinality's EqualLinear stores weight/lr_mul and
bias/lr_mul and applies weight*lr/sqrt(in), bias*lr at run time, exactly as FullyConnectedLayer;
its modulated conv uses the unflipped weight (F.conv2d / conv_transpose2d) like ours; its blur and
upsample kernels are the normalised [1,3,3,1] outer product times up**2 = 4, i.e. our
resample_filter (sum 1) with gain up**2; ToRGB styles are scaled by 1/sqrt(in) in both.
"""

from __future__ import annotations

import argparse
import re
import warnings
from pathlib import Path
from typing import Dict

import torch

from src.ops import upfirdn2d
from src.stylegan.generator import Generator
from src.stylegan.nvidia_pickle import copy_tensors_into
from src.utils.errors import UserError

W_AVG_SAMPLES = 10_000
W_AVG_SEED = 0


def _torch_load(path: Path):
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # truncated zip, foreign globals (weights_only refusal), ...
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a loadable rosinality checkpoint ({first})") from None


def infer_hparams(sd: Dict[str, torch.Tensor], path) -> dict:
    """size, n_mlp, style_dim, channel_multiplier, img_channels from the g_ema keys (docs section 2)."""
    style_ids = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"style\.(\d+)\.weight", k)))
    n_mlp = len(style_ids)
    if n_mlp == 0 or style_ids != list(range(1, n_mlp + 1)):
        raise UserError(f"{path}: g_ema has no mapping layers style.1..style.N (not a rosinality StyleGAN2)")
    style_dim = int(sd["style.1.weight"].shape[1])
    rgb_ids = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(r"to_rgbs\.(\d+)\.conv\.weight", k)))
    if rgb_ids != list(range(len(rgb_ids))):
        raise UserError(f"{path}: g_ema to_rgbs.* entries are not numbered 0..N-1")
    size = 2 ** (len(rgb_ids) + 2)
    cm = 2  # irrelevant below 64 px (all layers have 512 channels)
    if size >= 64:
        out64 = int(sd["convs.6.conv.weight"].shape[1])
        if out64 % 256 != 0 or out64 // 256 not in (1, 2):
            raise UserError(f"{path}: 64 px layer has {out64} channels; only channel_multiplier 1 or 2 map to "
                            f"StyleGAN2-ADA (channel_max 512)")
        cm = out64 // 256
    if "to_rgb1.conv.weight" not in sd:
        raise UserError(f"{path}: g_ema has no to_rgb1 (not a rosinality StyleGAN2)")
    img_channels = int(sd["to_rgb1.conv.weight"].shape[1])
    return dict(size=size, n_mlp=n_mlp, style_dim=style_dim, channel_multiplier=cm, img_channels=img_channels)


def generator_kwargs(hp: dict) -> dict:
    """Our Generator kwargs for rosinality hyper-parameters (channel_base 16384*cm, channel_max 512)."""
    return dict(z_dim=hp["style_dim"], c_dim=0, w_dim=hp["style_dim"], img_resolution=hp["size"],
                img_channels=hp["img_channels"], mapping_kwargs=dict(num_layers=hp["n_mlp"]),
                synthesis_kwargs=dict(channel_base=16384 * hp["channel_multiplier"], channel_max=512))


def map_state_dict(sd: Dict[str, torch.Tensor], size: int, n_mlp: int, path) -> Dict[str, torch.Tensor]:
    """rosinality g_ema state dict -> our names/layouts (without mapping.w_avg). Every key is consumed."""
    used = set()

    def take(key):
        if key not in sd:
            raise UserError(f"{path}: g_ema lacks {key}")
        used.add(key)
        return sd[key]

    out: Dict[str, torch.Tensor] = {}
    for k in range(n_mlp):
        out[f"mapping.fc{k}.weight"] = take(f"style.{k + 1}.weight")
        out[f"mapping.fc{k}.bias"] = take(f"style.{k + 1}.bias")
    out["synthesis.b4.const"] = take("input.input")[0]

    def styled_conv(src, dst, noise_idx):
        out[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.noise_strength"] = take(f"{src}.noise.weight").reshape([])
        out[f"{dst}.bias"] = take(f"{src}.activate.bias")
        out[f"{dst}.noise_const"] = take(f"noises.noise_{noise_idx}")[0, 0]

    def to_rgb(src, dst):
        out[f"{dst}.weight"] = take(f"{src}.conv.weight")[0]
        out[f"{dst}.affine.weight"] = take(f"{src}.conv.modulation.weight")
        out[f"{dst}.affine.bias"] = take(f"{src}.conv.modulation.bias")
        out[f"{dst}.bias"] = take(f"{src}.bias").reshape([-1])

    styled_conv("conv1", "synthesis.b4.conv1", 0)
    to_rgb("to_rgb1", "synthesis.b4.torgb")
    expected_kernel = upfirdn2d.setup_filter([1, 3, 3, 1]) * 4
    for k in range(size.bit_length() - 3):  # log2(size) - 2 blocks above 4x4
        res = 2 ** (k + 3)
        styled_conv(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1)
        styled_conv(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2)
        to_rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb")
        for kernel_key in (f"convs.{2 * k}.conv.blur.kernel", f"to_rgbs.{k}.upsample.kernel"):
            kernel = take(kernel_key)
            if kernel.shape != expected_kernel.shape or not torch.allclose(kernel.float(), expected_kernel, atol=1e-6):
                raise UserError(f"{path}: {kernel_key} is not the standard [1,3,3,1] blur kernel (sum 4)")
    left = sorted(set(sd) - used)
    if left:
        raise UserError(f"{path}: g_ema has entries that do not map to StyleGAN2-ADA: {', '.join(left[:4])}")
    # Buffers of ours that rosinality does not store: the (standard) resample filters.
    return out


@torch.no_grad()
def estimate_w_avg(G: Generator, num: int = W_AVG_SAMPLES, seed: int = W_AVG_SEED) -> torch.Tensor:
    """Mean of mapping(z) over ``num`` z ~ N(0, I) drawn with a fixed seed -> [w_dim]."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn([num, G.z_dim], generator=gen)
    total = torch.zeros([G.w_dim], dtype=torch.float64)
    for chunk in z.split(2500):
        total += G.mapping(chunk, None)[:, 0].sum(dim=0).double()
    return (total / num).float()


def load_rosinality(path, device="cpu") -> Generator:
    """rosinality ``*.pt`` -> our Generator (eval mode) on ``device``; the same ws give the same image."""
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("g_ema"), dict):
        keys = ", ".join(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise UserError(f"{path}: not a rosinality checkpoint (no 'g_ema' state dict; found {keys})")
    sd = {k: v for k, v in ckpt["g_ema"].items()}
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{path}: g_ema holds non-tensor entries")
    hp = infer_hparams(sd, path)
    args = ckpt.get("args")
    if isinstance(args, argparse.Namespace):
        for name, key in (("size", "size"), ("n_mlp", "n_mlp"), ("latent", "style_dim"),
                          ("channel_multiplier", "channel_multiplier")):
            given = getattr(args, name, None)
            if given is not None and (key != "channel_multiplier" or hp["size"] >= 64) and int(given) != hp[key]:
                raise UserError(f"{path}: args.{name}={given} contradicts the weights ({key}={hp[key]})")
    G = Generator(**generator_kwargs(hp))
    tensors = map_state_dict(sd, hp["size"], hp["n_mlp"], path)
    own = G.state_dict()
    for name, t in own.items():
        if name.endswith("resample_filter"):
            tensors[name] = t
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None:
        if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() != hp["style_dim"]:
            raise UserError(f"{path}: latent_avg must be a tensor of {hp['style_dim']} values")
        tensors["mapping.w_avg"] = latent_avg.reshape([-1])
        copy_tensors_into(G, tensors, str(path))
    else:
        tensors["mapping.w_avg"] = own["mapping.w_avg"]
        copy_tensors_into(G, tensors, str(path))
        G.mapping.w_avg.copy_(estimate_w_avg(G))
        warnings.warn(f"{path}: checkpoint has no latent_avg; estimated w_avg from {W_AVG_SAMPLES} mapped z "
                      f"(seed {W_AVG_SEED}), so truncation differs slightly from the original", UserWarning,
                      stacklevel=2)
    return G.eval().to(device)
