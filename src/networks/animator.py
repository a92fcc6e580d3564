"""Recurrent motion generator over CLIP embeddings and the W+ mappers (Hang et al. 2023).

Shapes: N videos, T frames, D CLIP embedding size, L = num_ws, C = w_dim.

Recurrence (paper):  z_0 = norm(e_text) + stopgrad(norm(e_img))   (image_branch=False: norm(e_text)),
                     h_0 = 0.01 * N(0, I)
    u     = [lrelu(W1 z_{t-1}); h_{t-1}]      lrelu: negative slope ``rnn_slope`` (paper 0.01)
    z_t   = z_{t-1} + r_t * lrelu(W2 u)
    h_t   = h_{t-1} + r_t * lrelu(W3 u)
    r_t   = 0.8 / T * decay(t, T) * strength
    d_t   = z_t - z_0                     (d_0 = 0)

Frame latents:
    variant='paper':  w_t = w_input + M_img(e_img) + M_mot(d_t)
        (the authors' code; M_mot(0) != 0 so frame 0 is not the input face; image_branch=False,
        the authors' text-only mode: no M_img term)
    variant='ours' :  w_t = w_input + s_t * M_img(e_img) + M_mot(d_t) - M_mot(0)
        with s_t = |d_t| / max_t' |d_t'| (detached; 'motion' schedule, default) or t / (T-1)
        ('linear'). Both vanish at t = 0 and the motion term vanishes with d_0 = 0, so frame 0's
        offset is exactly zero: ws[:, 0] == w_input bit for bit. The 'motion' schedule makes the
        image-specific offset follow the progress of the motion (also under the inference decay
        schedules) and makes strength=0 a still video.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.utils.errors import UserError

DECAYS = ("none", "linear", "sqrt", "exp", "const")
VARIANTS = ("ours", "paper")
OFFSET_SPACES = ("wplus", "w")


def decay_factor(t: int, num_frames: int, decay: str) -> float:
    """Multiplier of the step size at step t (1..T-1) of a T-frame video.

    none/const: 1 ; linear: (T-t)/T ; sqrt: sqrt((T-t)/T) ; exp: 1 - exp(t/T - 1).
    ('none' is the training setting, 'const' the same constant rate requested at inference.)
    """
    T = float(num_frames)
    if decay in ("none", "const"):
        return 1.0
    if decay == "linear":
        return (T - t) / T
    if decay == "sqrt":
        return math.sqrt((T - t) / T)
    if decay == "exp":
        return 1.0 - math.exp(t / T - 1.0)
    raise UserError(f"decay '{decay}' is not one of {', '.join(DECAYS)}")


def step_sizes(num_frames: int, decay: str = "none", strength: float = 1.0, base: float = 0.8) -> list[float]:
    """r_t for t = 1..T-1: base / T * decay(t, T) * strength."""
    return [base / num_frames * decay_factor(t, num_frames, decay) * strength for t in range(1, num_frames)]


MOTION_TOTALS = ("train", "paper")


def resample_frames(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """x [N,T,...]: one motion sampled at T evenly spaced times -> [N,num_frames,...] sampled at
    num_frames evenly spaced times of the same motion (linear in time; the first and last frames
    are kept exactly, so a motion that starts at the input face still does)."""
    T = x.shape[1]
    if num_frames < 2 or T < 2:
        raise UserError(f"resampling needs at least 2 frames, got {T} -> {num_frames}")
    if num_frames == T:
        return x
    pos = torch.linspace(0.0, T - 1.0, num_frames, dtype=torch.float64)
    lo = pos.floor().long().clamp(max=T - 2)
    frac = (pos - lo.double()).to(x.dtype).to(x.device)
    frac = frac.view(1, num_frames, *([1] * (x.ndim - 2)))
    lo = lo.to(x.device)
    a, b = x.index_select(1, lo), x.index_select(1, lo + 1)
    out = a + (b - a) * frac
    out[:, 0], out[:, -1] = x[:, 0], x[:, -1]
    return out


def training_matched_strength(num_frames: int, decay: str, train_frames: int, base: float = 0.8) -> float:
    """Factor on r_t that makes a T-frame video under ``decay`` move as far in total as a training
    video (``train_frames`` frames, no decay): sum_t r_t = base * (train_frames - 1) / train_frames.

    The paper's inference (r_t = base / T * decay(t, T)) moves less than training: a 16-frame
    linear-decay video sums to 0.375 against 0.6 for the 4-frame training videos (factor 1.6), so
    the last frame stops short of where the CLIP loss put it; the factor keeps the decay's shape.
    """
    inference_total = sum(step_sizes(num_frames, decay, 1.0, base))
    if inference_total <= 0:
        raise UserError(f"decay '{decay}' gives no motion over {num_frames} frames")
    return sum(step_sizes(train_frames, "none", 1.0, base)) / inference_total


class PixelNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) over the feature axis. x: [N,F] -> [N,F]."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class EqualLinear(nn.Module):
    """Equalised-learning-rate linear layer: weights stored N(0,1)/lr_mul, scaled at run time.

    activation 'lrelu' is the fused leaky ReLU: lrelu(x W^T + b, 0.2) * sqrt(2); 'linear' is none.
    x: [N,in] -> [N,out].
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "lrelu",
                 lr_mul: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        if activation not in ("lrelu", "linear"):
            raise UserError(f"mapper activation '{activation}' is not lrelu or linear")
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)
        if self.activation == "lrelu":
            out = F.leaky_relu(out, 0.2) * math.sqrt(2.0)
        return out


class Mapper(nn.Module):
    """PixelNorm + 3 equalised linear layers: [N,in] -> W+ offset [N,num_ws,w_dim].

    Widths in -> hidden -> hidden -> num_ws*w_dim; lrelu after every layer in the paper,
    the last layer's activation is configurable (``last_activation='linear'`` lets offsets be negative).
    """

    def __init__(self, in_features: int, num_ws: int, w_dim: int, hidden: Optional[int] = None,
                 last_activation: str = "lrelu", lr_mul: float = 1.0):
        super().__init__()
        hidden = hidden or in_features
        self.num_ws, self.w_dim = num_ws, w_dim
        self.net = nn.Sequential(
            PixelNorm(),
            EqualLinear(in_features, hidden, "lrelu", lr_mul),
            EqualLinear(hidden, hidden, "lrelu", lr_mul),
            EqualLinear(hidden, num_ws * w_dim, last_activation, lr_mul),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0], self.num_ws, self.w_dim)


class RecurrentAnimator(nn.Module):
    """Text-driven latent trajectory generator.

    forward(w_input [N,L,C], text_emb [N,D], image_emb [N,D], num_frames T, decay, strength,
            generator | h0_seeds [N] (h_0 noise, see initial_hidden))
      -> dict(ws [N,T,L,C], offsets [N,T,L,C] = ws - w_input, motion [N,T,D] = d_t,
              image_offset [N,L,C], image_scale [N,T],
              motion_offsets [N,T,L,C]: the part of the offsets that changes over time, on which the
              smoothness and endpoint losses act (paper: M_mot(d_t) alone, as the authors' code
              computes them; ours: the offsets themselves, whose image part varies with s_t))
    """

    def __init__(self, embed_dim: int, num_ws: int, w_dim: int, hidden: int = 384, variant: str = "ours",
                 mapper_hidden: Optional[int] = None, mapper_last_activation: str = "lrelu",
                 mapper_lr_mul: float = 1.0, step_base: float = 0.8, h0_std: float = 0.01,
                 h0_eval: str = "random", image_offset_schedule: str = "motion", use_image_mapper: bool = True,
                 offset_space: str = "wplus", offset_layers: Optional[Sequence[int]] = None,
                 rnn_slope: float = 0.2, image_branch: bool = True):
        super().__init__()
        if not 0.0 <= float(rnn_slope) < 1.0:
            raise UserError(f"rnn_slope must be in [0, 1), got {rnn_slope}")
        if variant not in VARIANTS:
            raise UserError(f"animator variant '{variant}' is not one of {', '.join(VARIANTS)}")
        if h0_eval not in ("random", "zero"):
            raise UserError(f"h0_eval '{h0_eval}' is not random or zero")
        if image_offset_schedule not in ("motion", "linear"):
            raise UserError(f"image_offset_schedule '{image_offset_schedule}' is not motion or linear")
        if offset_space not in OFFSET_SPACES:
            raise UserError(f"offset_space '{offset_space}' is not one of {', '.join(OFFSET_SPACES)}")
        layer_mask = torch.ones(num_ws, 1)
        if offset_layers is not None:
            layers = [int(i) for i in offset_layers]
            bad = [i for i in layers if not 0 <= i < num_ws]
            if not layers or bad or len(set(layers)) != len(layers):
                raise UserError(f"offset_layers must be distinct W+ layer indices in [0, {num_ws - 1}], "
                                f"got {list(offset_layers)}")
            layer_mask = torch.zeros(num_ws, 1)
            layer_mask[layers] = 1.0
        self.offset_space = offset_space
        self.offset_layers = None if offset_layers is None else sorted(int(i) for i in offset_layers)
        # not persistent: it follows from the constructor arguments, and checkpoints without it load
        self.register_buffer("layer_mask", layer_mask, persistent=False)
        mapped_ws = 1 if offset_space == "w" else num_ws
        self.embed_dim, self.num_ws, self.w_dim, self.hidden = embed_dim, num_ws, w_dim, hidden
        self.variant, self.step_base, self.h0_std, self.h0_eval = variant, step_base, h0_std, h0_eval
        self.image_offset_schedule = image_offset_schedule
        self.rnn_slope, self.image_branch = float(rnn_slope), bool(image_branch)
        self.W1 = nn.Linear(embed_dim, hidden)
        self.W2 = nn.Linear(2 * hidden, embed_dim)
        self.W3 = nn.Linear(2 * hidden, hidden)
        self.motion_mapper = Mapper(embed_dim, mapped_ws, w_dim, mapper_hidden, mapper_last_activation, mapper_lr_mul)
        self.image_mapper = (Mapper(embed_dim, mapped_ws, w_dim, mapper_hidden, mapper_last_activation, mapper_lr_mul)
                             if use_image_mapper and image_branch else None)

    def place(self, offset: torch.Tensor) -> torch.Tensor:
        """A mapper's output [M,1|L,C] -> W+ offset [M,L,C]: a W offset is shared by every layer;
        layers outside offset_layers get zero."""
        return offset.expand(offset.shape[0], self.num_ws, self.w_dim) * self.layer_mask.to(offset.dtype)

    def initial_hidden(self, n: int, device, dtype, generator: Optional[torch.Generator] = None,
                       seeds: Optional[Sequence[int] | torch.Tensor] = None) -> torch.Tensor:
        """h_0 [N,hidden]: h0_std * N(0,I); zero in eval if h0_eval='zero'.

        seeds: one int per row; row i is drawn from its own CPU generator seeded with seeds[i], so
        it does not depend on the other rows (training: the same h_0 per sample whatever the batch
        split over DDP ranks). Else ``generator`` draws all N rows together (inference with one
        seed), else the global RNG.
        """
        if (not self.training and self.h0_eval == "zero") or self.h0_std == 0:
            return torch.zeros(n, self.hidden, device=device, dtype=dtype)
        if seeds is not None:
            if generator is not None:
                raise ValueError("give generator or seeds, not both")
            seeds = seeds.tolist() if isinstance(seeds, torch.Tensor) else list(seeds)
            if len(seeds) != n:
                raise ValueError(f"{len(seeds)} h0 seeds for {n} rows")
            noise = torch.stack([torch.randn(self.hidden, generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                                 for s in seeds]).to(device)
        elif generator is not None:
            noise = torch.randn(n, self.hidden, generator=generator, device=generator.device, dtype=dtype)
            noise = noise.to(device)
        else:
            noise = torch.randn(n, self.hidden, device=device, dtype=dtype)
        return self.h0_std * noise

    def trajectory(self, text_emb: torch.Tensor, image_emb: Optional[torch.Tensor], num_frames: int,
                   decay: str = "none", strength: float = 1.0,
                   generator: Optional[torch.Generator] = None,
                   h0_seeds: Optional[Sequence[int] | torch.Tensor] = None,
                   h0: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Embedding-space motion d_t = z_t - z_0: [N,D],[N,D] -> [N,T,D] with d_0 = 0.
        generator / h0_seeds [N]: see :meth:`initial_hidden`; h0 [N,hidden]: the initial hidden state
        itself (e.g. to reproduce another implementation's draw). image_emb is not read (may be None)
        when image_branch is False."""
        if num_frames < 2:
            raise UserError(f"num_frames must be >= 2, got {num_frames}")
        z0 = F.normalize(text_emb.float(), dim=-1)
        if self.image_branch:
            if image_emb is None:
                raise UserError("this animator starts from the text and the image embedding: give image_emb")
            z0 = z0 + F.normalize(image_emb.float(), dim=-1).detach()
        if h0 is not None:
            if tuple(h0.shape) != (z0.shape[0], self.hidden):
                raise UserError(f"h0 must be [{z0.shape[0]},{self.hidden}], got {tuple(h0.shape)}")
            h = h0.to(z0.device, z0.dtype)
        else:
            h = self.initial_hidden(z0.shape[0], z0.device, z0.dtype, generator, h0_seeds)
        z, slope = z0, self.rnn_slope
        motion = [torch.zeros_like(z0)]
        for r in step_sizes(num_frames, decay, strength, self.step_base):
            u = torch.cat([F.leaky_relu(self.W1(z), slope), h], dim=1)
            z, h = z + r * F.leaky_relu(self.W2(u), slope), h + r * F.leaky_relu(self.W3(u), slope)
            motion.append(z - z0)
        return torch.stack(motion, dim=1)

    def forward(self, w_input: torch.Tensor, text_emb: torch.Tensor, image_emb: Optional[torch.Tensor],
                num_frames: int, decay: str = "none", strength: float = 1.0,
                generator: Optional[torch.Generator] = None,
                h0_seeds: Optional[Sequence[int] | torch.Tensor] = None,
                h0: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        n, T = w_input.shape[0], num_frames
        if w_input.shape[1:] != (self.num_ws, self.w_dim):
            raise UserError(f"w_input must be [N,{self.num_ws},{self.w_dim}], got {tuple(w_input.shape)}")
        motion = self.trajectory(text_emb, image_emb, T, decay, strength, generator, h0_seeds, h0)  # [N,T,D]
        D = motion.shape[-1]
        if self.image_mapper is not None:
            image_offset = self.place(self.image_mapper(F.normalize(image_emb.float(), dim=-1)))  # [N,L,C]
        else:
            image_offset = w_input.new_zeros(n, self.num_ws, self.w_dim)

        if self.variant == "paper":
            mot = self.place(self.motion_mapper(motion.reshape(n * T, D))).view(n, T, self.num_ws, self.w_dim)
            scale = torch.ones(n, T, device=w_input.device, dtype=w_input.dtype)
            offsets = image_offset[:, None] + mot if self.image_mapper is not None else mot
        else:
            # frames 1..T-1 only: frame 0's offset is zero by construction (d_0 = 0, s_0 = 0), kept
            # exactly zero instead of relying on M(d_0) - M(0) cancelling bit for bit.
            moving = motion[:, 1:].reshape(n * (T - 1), D)
            mot = self.place(self.motion_mapper(moving) - self.motion_mapper(motion.new_zeros(1, D)))
            mot = mot.view(n, T - 1, self.num_ws, self.w_dim)
            scale = self.image_scale(motion).to(w_input.dtype)  # [N,T], scale[:,0] = 0
            rest = scale[:, 1:, None, None] * image_offset[:, None] + mot
            offsets = torch.cat([torch.zeros_like(rest[:, :1]), rest], dim=1)
            mot = offsets
        offsets = offsets.to(w_input.dtype)
        ws = torch.cat([w_input[:, None], w_input[:, None] + offsets[:, 1:]], dim=1) if self.variant == "ours" \
            else w_input[:, None] + offsets
        return dict(ws=ws, offsets=offsets, motion=motion, image_offset=image_offset, image_scale=scale,
                    motion_offsets=mot)

    def image_scale(self, motion: torch.Tensor) -> torch.Tensor:
        """s_t [N,T] for variant 'ours' from motion d [N,T,D]; s_0 = 0, s_{T-1} = 1 (or 0 if no motion)."""
        n, T = motion.shape[:2]
        if self.image_offset_schedule == "linear":
            return torch.linspace(0, 1, T, device=motion.device).expand(n, T)
        mag = motion.detach().norm(dim=-1)  # [N,T]
        # detached: a normalised scale has unstable gradients when the motion is small
        return mag / mag.max(dim=1, keepdim=True).values.clamp_min(1e-8)
