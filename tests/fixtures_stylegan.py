"""Builders for StyleGAN test fixtures (no conftest): tiny generators, official-layout NVIDIA
pickles, rosinality state dicts from the doc tables, and an independent rosinality-style forward.

Official pickle layout (docs/stylegan_formats.md section 1): every module is one REDUCE of
torch_utils.persistence._reconstruct_persistent_obj(meta) with meta = {type, version 6,
module_src, class_name, state}; nested kwargs are dnnlib.util.EasyDict; tensors go through
torch's own pickling (_rebuild_tensor_v2 / _rebuild_parameter / storage._load_from_bytes of a
legacy torch.save stream), which is exactly what the official snapshots contain.
"""
from __future__ import annotations

import contextlib
import io
import math
import pickle
import sys
import types
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F

from src.stylegan import Discriminator, Generator

FAKE_NETWORKS_SRC = "# training/networks.py (fake, never executed)\nimport torch\n" + "#" * 200 + "\n"


def tiny_generator(res=32, c_dim=0, seed=0, w_dim=32, channel_base=512, channel_max=32, num_layers=2,
                   randomize=True, **synthesis_kwargs) -> Generator:
    """A small G with all parameters randomised (bias, noise_strength, w_avg are non-zero)."""
    torch.manual_seed(seed)
    G = Generator(z_dim=w_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=res, img_channels=3,
                  mapping_kwargs=dict(num_layers=num_layers),
                  synthesis_kwargs=dict(channel_base=channel_base, channel_max=channel_max, **synthesis_kwargs))
    if randomize:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in G.named_parameters():
                if name.endswith("bias") or name.endswith("noise_strength"):
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
            G.mapping.w_avg.copy_(0.3 * torch.randn(G.w_dim, generator=gen))
    return G.eval()


# ----------------------------------------------------------------------------------------------
# Official-layout NVIDIA pickle writer
# ----------------------------------------------------------------------------------------------

class _Record:
    """Pickles as REDUCE(torch_utils.persistence._reconstruct_persistent_obj, (meta,))."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (sys.modules["torch_utils.persistence"]._reconstruct_persistent_obj, (self.meta,))


class _Evil:
    """Pickles as a call of ``fn(*args)`` (for malicious-pickle tests)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


@contextlib.contextmanager
def official_modules():
    """Temporarily provide importable stand-ins named torch_utils.persistence / dnnlib.util so
    the standard pickler emits exactly the official global names."""
    names = ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util")
    if any(n in sys.modules for n in names):
        raise RuntimeError("official_modules: a module with an official name is already imported")
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # never called in tests: our loader replaces it
        raise AssertionError("must not be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj

    class EasyDict(dict):
        def __getattr__(self, name):
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        def __setattr__(self, name, value):
            self[name] = value

    EasyDict.__module__ = "dnnlib.util"
    EasyDict.__qualname__ = "EasyDict"
    util.EasyDict = EasyDict
    mods = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": persistence,
            "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": util}
    sys.modules.update(mods)
    try:
        yield util.EasyDict
    finally:
        for n in names:
            sys.modules.pop(n, None)


_PLAIN_ATTRS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "num_ws", "activation", "conv_clamp",
                "up", "down", "padding", "resolution", "use_noise", "block_resolutions", "in_channels",
                "architecture", "is_last", "use_fp16", "channels_last", "num_conv", "num_torgb", "num_layers",
                "group_size", "num_channels", "cmap_dim")
_NUMPY_ATTRS = ("weight_gain", "bias_gain", "act_gain")


def _record(module: torch.nn.Module, easydict, module_src: str, init_kwargs=None) -> _Record:
    state = OrderedDict()
    state["training"] = False
    state["_parameters"] = OrderedDict(
        (n, torch.nn.Parameter(p.detach().clone(), requires_grad=False) if p is not None else None)
        for n, p in module._parameters.items())
    state["_buffers"] = OrderedDict((n, b.detach().clone() if b is not None else None)
                                    for n, b in module._buffers.items())
    state["_non_persistent_buffers_set"] = set()
    for hook in ("_backward_pre_hooks", "_backward_hooks", "_forward_hooks", "_forward_hooks_with_kwargs",
                 "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_state_dict_hooks",
                 "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks"):
        state[hook] = OrderedDict()
    state["_modules"] = OrderedDict((n, _record(c, easydict, module_src) if c is not None else None)
                                    for n, c in module._modules.items())
    state["_init_args"] = ()
    state["_init_kwargs"] = init_kwargs if init_kwargs is not None else {}
    for a in _PLAIN_ATTRS:
        if a in module.__dict__:
            state[a] = module.__dict__[a]
    for a in _NUMPY_ATTRS:
        if a in module.__dict__:
            state[a] = np.float64(module.__dict__[a])
    meta = dict(type="class", version=6, module_src=module_src, class_name=type(module).__name__, state=state)
    return _Record(meta)


def _official_g_kwargs(G: Generator, easydict) -> dict:
    kw = dict(G.init_kwargs)
    for key in ("mapping_kwargs", "synthesis_kwargs"):
        if key in kw:
            kw[key] = easydict(kw[key])
    return kw


def official_pickle_bytes(G_ema: Generator, G: Generator = None, D: Discriminator = None, protocol: int = 4,
                          module_src: str = FAKE_NETWORKS_SRC, bare: bool = False, keys=None,
                          replace=None) -> bytes:
    """Pickle bytes in the official snapshot layout (keys training_set_kwargs, G, D, G_ema, augment_pipe).

    bare: pickle only the persistent G_ema object. keys: subset of top-level keys to keep.
    replace: {top-level key: object} to inject (e.g. an _Evil)."""
    with official_modules() as easydict:
        g_ema = _record(G_ema, easydict, module_src, _official_g_kwargs(G_ema, easydict))
        if bare:
            return pickle.dumps(g_ema, protocol=protocol)
        aug = torch.nn.Module()
        aug.register_buffer("p", torch.zeros([]))
        aug.register_buffer("Hz_geom", torch.randn(12))
        aug.register_buffer("Hz_fbank", torch.randn(4, 43))
        aug_rec = _record(aug, easydict, "# training/augment.py (fake)\n")
        aug_rec.meta["class_name"] = "AugmentPipe"
        top = OrderedDict()
        top["training_set_kwargs"] = dict(class_name="training.dataset.ImageFolderDataset", path="/data/x.zip",
                                          use_labels=G_ema.c_dim > 0, max_size=100, xflip=False,
                                          resolution=G_ema.img_resolution)
        top["G"] = _record(G if G is not None else G_ema, easydict, module_src,
                           _official_g_kwargs(G if G is not None else G_ema, easydict))
        if D is not None:
            d_kw = dict(D.init_kwargs)
            for k in ("block_kwargs", "mapping_kwargs", "epilogue_kwargs"):
                d_kw[k] = easydict(d_kw[k])
            top["D"] = _record(D, easydict, module_src, d_kw)
        else:
            top["D"] = None
        top["G_ema"] = g_ema
        top["augment_pipe"] = aug_rec
        if keys is not None:
            top = OrderedDict((k, v) for k, v in top.items() if k in keys)
        for k, v in (replace or {}).items():
            top[k] = v
        return pickle.dumps(dict(top), protocol=protocol)


# ----------------------------------------------------------------------------------------------
# rosinality layout (doc section 2 tables)
# ----------------------------------------------------------------------------------------------

def rosinality_expected_shapes(size: int, cm: int, n_mlp: int = 8, style_dim: int = 512) -> "OrderedDict[str, tuple]":
    """Key -> shape of a rosinality g_ema, written out from the doc's table."""
    ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}
    out = OrderedDict()
    for k in range(1, n_mlp + 1):
        out[f"style.{k}.weight"] = (style_dim, style_dim)
        out[f"style.{k}.bias"] = (style_dim,)
    out["input.input"] = (1, ch[4], 4, 4)
    out["conv1.conv.weight"] = (1, ch[4], ch[4], 3, 3)
    out["conv1.conv.modulation.weight"] = (ch[4], style_dim)
    out["conv1.conv.modulation.bias"] = (ch[4],)
    out["conv1.noise.weight"] = (1,)
    out["conv1.activate.bias"] = (ch[4],)
    out["to_rgb1.bias"] = (1, 3, 1, 1)
    out["to_rgb1.conv.weight"] = (1, 3, ch[4], 1, 1)
    out["to_rgb1.conv.modulation.weight"] = (ch[4], style_dim)
    out["to_rgb1.conv.modulation.bias"] = (ch[4],)
    log2 = int(math.log2(size))
    for k in range(log2 - 2):
        res = 2 ** (k + 3)
        cin, cout = ch[res // 2], ch[res]
        for j, (i_ch, o_ch) in ((2 * k, (cin, cout)), (2 * k + 1, (cout, cout))):
            out[f"convs.{j}.conv.weight"] = (1, o_ch, i_ch, 3, 3)
            if j % 2 == 0:
                out[f"convs.{j}.conv.blur.kernel"] = (4, 4)
            out[f"convs.{j}.conv.modulation.weight"] = (i_ch, style_dim)
            out[f"convs.{j}.conv.modulation.bias"] = (i_ch,)
            out[f"convs.{j}.noise.weight"] = (1,)
            out[f"convs.{j}.activate.bias"] = (o_ch,)
        out[f"to_rgbs.{k}.bias"] = (1, 3, 1, 1)
        out[f"to_rgbs.{k}.upsample.kernel"] = (4, 4)
        out[f"to_rgbs.{k}.conv.weight"] = (1, 3, cout, 1, 1)
        out[f"to_rgbs.{k}.conv.modulation.weight"] = (cout, style_dim)
        out[f"to_rgbs.{k}.conv.modulation.bias"] = (cout,)
    for i in range(2 * log2 - 3):
        r = 2 ** ((i + 1) // 2 + 2)
        out[f"noises.noise_{i}"] = (1, 1, r, r)
    return out


def _blur4() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = torch.outer(k, k)
    return k / k.sum() * 4  # rosinality's make_kernel(...) * factor**2


def rosinality_state_dict(G: Generator) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of the doc's correspondence table: our G -> rosinality g_ema state dict."""
    sd = G.state_dict()
    out = OrderedDict()
    n_mlp = G.mapping.num_layers
    for k in range(n_mlp):
        out[f"style.{k + 1}.weight"] = sd[f"mapping.fc{k}.weight"].clone()
        out[f"style.{k + 1}.bias"] = sd[f"mapping.fc{k}.bias"].clone()
    out["input.input"] = sd["synthesis.b4.const"][None].clone()

    def styled(dst, src, noise_i, up):
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        if up:
            out[f"{dst}.conv.blur.kernel"] = _blur4()
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()
        out[f"{dst}.noise.weight"] = sd[f"{src}.noise_strength"].reshape([1]).clone()
        out[f"{dst}.activate.bias"] = sd[f"{src}.bias"].clone()
        noises[noise_i] = sd[f"{src}.noise_const"][None, None].clone()

    def rgb(dst, src, up):
        out[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(1, -1, 1, 1).clone()
        if up:
            out[f"{dst}.upsample.kernel"] = _blur4()
        out[f"{dst}.conv.weight"] = sd[f"{src}.weight"][None].clone()
        out[f"{dst}.conv.modulation.weight"] = sd[f"{src}.affine.weight"].clone()
        out[f"{dst}.conv.modulation.bias"] = sd[f"{src}.affine.bias"].clone()

    noises = {}
    styled("conv1", "synthesis.b4.conv1", 0, False)
    rgb("to_rgb1", "synthesis.b4.torgb", False)
    for k in range(int(math.log2(G.img_resolution)) - 2):
        res = 2 ** (k + 3)
        styled(f"convs.{2 * k}", f"synthesis.b{res}.conv0", 2 * k + 1, True)
        styled(f"convs.{2 * k + 1}", f"synthesis.b{res}.conv1", 2 * k + 2, False)
        rgb(f"to_rgbs.{k}", f"synthesis.b{res}.torgb", True)
    for i in sorted(noises):
        out[f"noises.noise_{i}"] = noises[i]
    return out


# ----------------------------------------------------------------------------------------------
# Independent rosinality-style forward (plain torch, no src.ops), from the rosinality maths
# ----------------------------------------------------------------------------------------------

def _upfirdn_plain(x, kernel, up, pad0, pad1):
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    k = kernel.flip([0, 1]).to(x.dtype)[None, None].repeat(c, 1, 1, 1)  # true convolution
    return F.conv2d(x, k, groups=c)


def _equal_linear(x, weight, bias, lr_mul=1.0, activate=False):
    out = F.linear(x, weight * (lr_mul / math.sqrt(weight.shape[1])), bias * lr_mul)
    return F.leaky_relu(out, 0.2) * math.sqrt(2) if activate else out


def _mod_conv(x, sd, prefix, style, demodulate=True, upsample=False):
    w = sd[f"{prefix}.conv.weight"]  # [1, O, I, k, k]
    n, i_ch = x.shape[:2]
    o_ch, k = w.shape[1], w.shape[-1]
    s = _equal_linear(style, sd[f"{prefix}.conv.modulation.weight"], sd[f"{prefix}.conv.modulation.bias"])
    weight = w / math.sqrt(i_ch * k * k) * s[:, None, :, None, None]
    if demodulate:
        weight = weight * torch.rsqrt(weight.square().sum([2, 3, 4]) + 1e-8)[:, :, None, None, None]
    x = x.reshape(1, n * i_ch, *x.shape[2:])
    if upsample:
        wt = weight.transpose(1, 2).reshape(n * i_ch, o_ch, k, k)
        out = F.conv_transpose2d(x, wt, stride=2, groups=n)
        out = out.reshape(n, o_ch, *out.shape[2:])
        return _upfirdn_plain(out, sd[f"{prefix}.conv.blur.kernel"], 1, 1, 1)
    out = F.conv2d(x, weight.reshape(n * o_ch, i_ch, k, k), padding=k // 2, groups=n)
    return out.reshape(n, o_ch, *out.shape[2:])


def rosinality_mapping(sd, z, n_mlp):
    x = z * torch.rsqrt(z.square().mean(1, keepdim=True) + 1e-8)
    for k in range(1, n_mlp + 1):
        x = _equal_linear(x, sd[f"style.{k}.weight"], sd[f"style.{k}.bias"], lr_mul=0.01, activate=True)
    return x


def rosinality_synthesis(sd, ws, size):
    """ws [N, n_latent, D] -> img [N, 3, size, size] with the stored noises (randomize_noise=False)."""
    n = ws.shape[0]

    def styled(x, prefix, w, noise_i, up=False):
        x = _mod_conv(x, sd, prefix, w, upsample=up)
        x = x + sd[f"{prefix}.noise.weight"] * sd[f"noises.noise_{noise_i}"]
        return F.leaky_relu(x + sd[f"{prefix}.activate.bias"][None, :, None, None], 0.2) * math.sqrt(2)

    def to_rgb(x, prefix, w, skip):
        out = _mod_conv(x, sd, prefix, w, demodulate=False) + sd[f"{prefix}.bias"]
        if skip is not None:
            out = out + _upfirdn_plain(skip, sd[f"{prefix}.upsample.kernel"], 2, 2, 1)
        return out

    x = sd["input.input"].repeat(n, 1, 1, 1)
    x = styled(x, "conv1", ws[:, 0], 0)
    skip = to_rgb(x, "to_rgb1", ws[:, 1], None)
    i = 1
    for k in range(int(math.log2(size)) - 2):
        x = styled(x, f"convs.{2 * k}", ws[:, i], 2 * k + 1, up=True)
        x = styled(x, f"convs.{2 * k + 1}", ws[:, i + 1], 2 * k + 2)
        skip = to_rgb(x, f"to_rgbs.{k}", ws[:, i + 2], skip)
        i += 2
    return skip


def torch_save_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()
