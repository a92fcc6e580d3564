"""The identity Jacobian of the inference projection in one generator forward pass.

``src.identity.projection.identity_jacobian`` differentiates reader(G(w)) with autograd: every
identity reading needs its own backward pass, and autograd's needs its own forward pass, so A
readings cost A forward and A backward passes of the generator. All A passes share one forward
pass, which :class:`SynthesisTape` runs once per face, keeping what the backward needs; the
readings' image-space gradients then go back through the generator's layers together, as a batch,
by the transposes written out below (convolution transposes, the FIR resampling's adjoint, the
derivatives of modulation, demodulation, bias, leaky ReLU and clamp). Same Jacobian up to float
rounding (``tests/test_pipeline_jacobian.py`` checks it against autograd), about half the work.

Covered: the StyleGAN2-ADA synthesis network of the 'skip' architecture with lrelu layers, on a
CPU (where every block runs in float32), noise mode 'const' or 'none'. :func:`supports` says
whether a generator qualifies; otherwise the caller uses autograd.

Notation: N faces, V readings pushed back per face, L = num_ws, C = w_dim.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from src.ops import upfirdn2d
from src.stylegan.layers import conv2d_resample

LRELU_SLOPE = 0.2
#: pixels of the readings' image-space gradients pushed back through the generator together: 2
#: readings at 128 px (each adds about 16 MB to the peak; 19 readings take 0.8 s in passes of 2 on
#: 2 cores, 0.77 s in passes of 5)
PIXELS_PER_PASS = 2 * 128 * 128


def supports(synthesis: torch.nn.Module, noise_mode: str, device: torch.device) -> bool:
    """Whether :class:`SynthesisTape` reproduces ``synthesis`` on ``device`` (else: use autograd).
    A CPU only: there the generator runs every block in float32; a GPU keeps autograd's Jacobian."""
    if device.type != "cpu":
        return False
    if noise_mode not in ("const", "none") or not hasattr(synthesis, "block_resolutions"):
        return False
    for res in synthesis.block_resolutions:
        block = getattr(synthesis, f"b{res}")
        if block.architecture != "skip" or not hasattr(block, "torgb"):
            return False
        for name in ("conv0", "conv1"):
            layer = getattr(block, name, None)
            if layer is not None and (layer.activation != "lrelu" or layer.up not in (1, 2)):
                return False
    return True


def _upfirdn_adjoint(g: torch.Tensor, f: torch.Tensor, up: int, down: int, p0: int, p1: int, in_size: int,
                     gain: float) -> torch.Tensor:
    """The adjoint of ``upfirdn2d(x, f, up, down, padding=[p0, p1, p0, p1], gain)`` for square x of
    side ``in_size``, applied to g: the same operation with the filter flipped, up and down swapped
    and the padding that gives back x's size."""
    fw = int(f.shape[-1])
    q0 = fw - p0 - 1
    q1 = in_size * up - g.shape[-1] * down + p0 - up + 1
    if down == 1 and q0 == q1 >= 0 and f.ndim == 2:
        # one strided correlation with f, the zero padding inside the convolution (no padded copy)
        c = g.shape[1]
        weight = (f.to(g.dtype) * gain)[None, None].expand(c, 1, *f.shape)
        return F.conv2d(g, weight, padding=q0, stride=up, groups=c)
    return upfirdn2d.upfirdn2d(g, f, up=down, down=up, padding=[q0, q1, q0, q1], flip_filter=True, gain=gain)


class _Modulated:
    """One SynthesisLayer's forward at the faces' latents (its non-fused form, as autograd's batched
    copies run it), and what its transpose needs."""

    def __init__(self, layer, x: torch.Tensor, w: torch.Tensor, noise_mode: str, gain: float = 1.0):
        self.layer = layer
        weight = layer.weight.float()
        styles = layer.affine(w)                                              # [N, I]
        sq = weight.square().sum(dim=[2, 3])                                  # [O, I]
        dcoefs = (styles.square() @ sq.t() + 1e-8).rsqrt()                    # [N, O]
        conv = conv2d_resample(x * styles[:, :, None, None], weight, layer.resample_filter, up=layer.up,
                               padding=layer.padding)
        scale = dcoefs[:, :, None, None]
        if layer.use_noise and noise_mode == "const":
            z = torch.addcmul(layer.noise_const * layer.noise_strength, conv, scale)
        else:
            z = conv * scale
        pre = z + layer.bias.to(z.dtype).view(1, -1, 1, 1)
        act_gain = layer.act_gain * gain
        out = F.leaky_relu(pre, LRELU_SLOPE) * act_gain
        slope = torch.where(pre > 0, act_gain, act_gain * LRELU_SLOPE)        # d out / d pre
        if layer.conv_clamp is not None:
            bound = layer.conv_clamp * gain
            slope = slope * ((out >= -bound) & (out <= bound))
            out = out.clamp(-bound, bound)
        self.out = out
        self.x, self.styles, self.dcoefs, self.sq, self.weight = x, styles, dcoefs, sq, weight
        self.slope_d = slope * scale                                          # d out / d conv
        self.slope_conv = slope * conv                                        # d out / d dcoefs, per pixel
        self.in_size = x.shape[-1]
        self.weight_t = weight.transpose(0, 1).contiguous()

    def backward(self, g: torch.Tensor, need_w: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """g [N, V, O, H, W] -> (gradient at the input x [N, V, I, h, w], at w [N, V, C] or None)."""
        n, v = g.shape[:2]
        layer = self.layer
        gd = (g * self.slope_conv[:, None]).sum(dim=[3, 4]) if need_w else None     # [N, V, O]
        gconv = g.mul_(self.slope_d[:, None]).flatten(0, 1)                   # g is the caller's to spend
        if layer.up == 1:
            gx = F.conv_transpose2d(gconv, self.weight, padding=layer.padding)
        else:
            # forward: conv_transpose2d(x, W^T, stride up), then the FIR filter (gain up^2)
            fw, k, up = int(layer.resample_filter.shape[-1]), int(self.weight.shape[-1]), layer.up
            p0 = layer.padding + (fw + up - 1) // 2 - (k - 1)
            p1 = layer.padding + (fw - up) // 2 - (k - up)
            g1 = _upfirdn_adjoint(gconv, layer.resample_filter, 1, 1, p0, p1, (self.in_size - 1) * up + k, up * up)
            gx = F.conv2d(g1, self.weight_t, stride=up)
        gx = gx.unflatten(0, (n, v))                                          # [N, V, I, h, w]
        gw = None
        if need_w:
            gs = (gx * self.x[:, None]).sum(dim=[3, 4])                       # [N, V, I]
            gs = gs - self.styles[:, None] * ((gd * self.dcoefs[:, None].pow(3)) @ self.sq)
            gw = gs @ (layer.affine.weight * layer.affine.weight_gain)
        return gx.mul_(self.styles[:, None, :, None, None]), gw


class _ToRGB:
    """One ToRGBLayer (modulated 1x1, no demodulation) and its transpose."""

    def __init__(self, layer, x: torch.Tensor, w: torch.Tensor):
        self.layer = layer
        styles = layer.affine(w) * layer.weight_gain                          # [N, I]
        mix = layer.weight[:, :, 0, 0].float()[None] * styles[:, None]        # [N, 3, I]
        y = torch.bmm(mix, x.flatten(2)).view(x.shape[0], -1, *x.shape[2:]) + layer.bias.view(1, -1, 1, 1)
        self.mask = None
        if layer.conv_clamp is not None:
            self.mask = (y >= -layer.conv_clamp) & (y <= layer.conv_clamp)
            y = y.clamp(-layer.conv_clamp, layer.conv_clamp)
        self.out, self.x, self.mix = y, x, mix

    def backward(self, g: torch.Tensor, need_w: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """g [N, V, 3, H, W] -> (gradient at x [N, V, I, H, W], at w [N, V, C] or None)."""
        if self.mask is not None:
            g = g * self.mask[:, None]
        flat = g.flatten(3)                                                   # [N, V, 3, HW]
        gx = (self.mix.transpose(1, 2)[:, None] @ flat).view(*g.shape[:2], -1, *g.shape[3:])
        gw = None
        if need_w:
            corr = flat @ self.x.flatten(2).transpose(1, 2)[:, None]          # [N, V, 3, I]
            gs = (corr * self.layer.weight[:, :, 0, 0].float()).sum(2) * self.layer.weight_gain
            gw = gs @ (self.layer.affine.weight * self.layer.affine.weight_gain)
        return gx, gw


class SynthesisTape:
    """``synthesis(ws)`` once, kept for :meth:`vjp`: gradients of many functions of the image at once.

    synthesis: a SynthesisNetwork that :func:`supports` accepts; ws [N, L, C]; ``image`` [N, 3, H, W]
    is what ``synthesis(ws, noise_mode, fused_modconv=False)`` returns, up to float rounding.
    """

    @torch.no_grad()
    def __init__(self, synthesis: torch.nn.Module, ws: torch.Tensor, noise_mode: str = "const"):
        self.num_ws, self.w_dim = ws.shape[1], ws.shape[2]
        ws = ws.float()
        self.blocks = []
        x = img = None
        index = 0
        for res in synthesis.block_resolutions:
            block = getattr(synthesis, f"b{res}")
            record = {"res": res, "filter": block.resample_filter, "img_in": None}
            if block.in_channels == 0:
                x = block.const.float().unsqueeze(0).expand(ws.shape[0], -1, -1, -1).contiguous()
            else:
                record["conv0"] = (_Modulated(block.conv0, x, ws[:, index], noise_mode), index)
                x = record["conv0"][0].out
            i1 = index + block.num_conv - 1
            record["conv1"] = (_Modulated(block.conv1, x, ws[:, i1], noise_mode), i1)
            x = record["conv1"][0].out
            if img is not None:
                record["img_in"] = img.shape[-1]
                img = upfirdn2d.upsample2d(img, block.resample_filter)
            i2 = index + block.num_conv
            record["torgb"] = (_ToRGB(block.torgb, x, ws[:, i2]), i2)
            y = record["torgb"][0].out.to(dtype=torch.float32, memory_format=torch.contiguous_format)
            img = img.add_(y) if img is not None else y
            # drop activations the transposes do not need
            for key in ("conv0", "conv1", "torgb"):
                if key in record:
                    record[key][0].out = None
            self.blocks.append(record)
            index += block.num_conv
        self.image = img

    @torch.no_grad()
    def vjp(self, g_img: torch.Tensor, need_w: Optional[torch.Tensor] = None) -> torch.Tensor:
        """g_img [N, V, 3, H, W]: V image-space cotangents per face -> their gradients at the latents
        [N, V, L, C]. need_w [L] bool: the latents whose gradient is wanted (the rest stay zero and
        cost nothing beyond the pass back through their layers)."""
        n, v = g_img.shape[:2]
        grads = g_img.new_zeros(n, v, self.num_ws, self.w_dim)
        need = [True] * self.num_ws if need_w is None else [bool(b) for b in need_w.tolist()]
        g_x = None
        for record in reversed(self.blocks):
            rgb, idx = record["torgb"]
            gx, gw = rgb.backward(g_img, need[idx])
            if gw is not None:
                grads[:, :, idx] += gw
            g_x = gx if g_x is None else g_x.add_(gx)
            del gx
            for key in ("conv1", "conv0"):
                if key in record:
                    layer, idx = record[key]
                    g_x, gw = layer.backward(g_x, need[idx])
                    if gw is not None:
                        grads[:, :, idx] += gw
            if record["img_in"] is not None:
                f = record["filter"]
                fw = int(f.shape[-1])
                flat = _upfirdn_adjoint(g_img.flatten(0, 1), f, 2, 1, (fw + 1) // 2, (fw - 2) // 2,
                                        record["img_in"], 4.0)
                g_img = flat.unflatten(0, (n, v))
        return grads


def identity_jacobian(synthesis: torch.nn.Module, reader, w: torch.Tensor, layer_mask: Optional[torch.Tensor] = None,
                      noise_mode: str = "const", chunk: Optional[int] = None, tape: Optional[SynthesisTape] = None,
                      shown: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """(J [N, A, L*C], readings [N, A]) as ``src.identity.projection.identity_jacobian`` gives them
    (readings of the clamped image, derivatives at the image itself), from one forward pass.

    reader: images [M, 3, H, W] -> [M, A] (differentiable); w [N, L, C]; layer_mask [L, 1];
    chunk: readings pushed back through the generator together (the memory of a pass grows with it:
    about 16 MB a reading at 128 px; default: PIXELS_PER_PASS worth, at least one); tape: a SynthesisTape of w when already run; shown:
    readings [N, A] -> bool [N, A], the readings a face shows: rows that no face shows are left zero
    (the projection leaves them out) instead of computed.
    """
    n, num_ws, w_dim = w.shape
    tape = tape if tape is not None else SynthesisTape(synthesis, w, noise_mode)
    image = tape.image
    with torch.no_grad():
        readings = reader(image.clamp(-1, 1)).float()
    a = readings.shape[1]
    if chunk is None:
        chunk = max(1, PIXELS_PER_PASS // (image.shape[-2] * image.shape[-1]))
    wanted = list(range(a)) if shown is None else shown(readings).any(0).cpu().nonzero().view(-1).tolist()
    need = torch.ones(num_ws, dtype=torch.bool) if layer_mask is None else layer_mask.view(-1).cpu() != 0
    # also under torch.inference_mode() (Lightning's validation): the reader's backward and the
    # writes into jac need tensors made outside it
    with torch.inference_mode(False), torch.enable_grad():
        jac = torch.zeros(n, a, num_ws, w_dim, device=image.device)
        for start in range(0, len(wanted), chunk):
            picked = torch.tensor(wanted[start:start + chunk], device=image.device)
            m = len(picked)
            img = image.detach().clone().repeat_interleave(m, 0).requires_grad_(True)   # [N*m, 3, H, W]
            out = reader(img).float().view(n, m, a)
            (g_img,) = torch.autograd.grad(out.gather(2, picked.view(1, m, 1).expand(n, m, 1)).sum(), img)
            jac[:, picked] = tape.vjp(g_img.view(n, m, *g_img.shape[1:]), need)
    if layer_mask is not None:
        jac = jac * layer_mask.to(jac.device, jac.dtype).view(1, 1, num_ws, 1)
    return jac.flatten(2), readings
