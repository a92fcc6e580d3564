"""Parameter space of the synthetic face renderer.

A face is one row of a float tensor ``[N, P]`` in *natural units* (each parameter between its
``low`` and ``high``). Identity parameters stay fixed while a face is animated; expression and
pose parameters are what an animation changes. Left/right always mean the *image's* left/right
(viewer's point of view): ``eye_open_l`` is the eye on the left half of the picture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from src.utils.constants import device_constant
from src.utils.errors import UserError


@dataclass(frozen=True)
class ParamSpec:
    """One renderer parameter.

    name: unique identifier; low/high: range in natural units; kind: 'identity' | 'expression';
    neutral: resting value (expressions) or typical value (identity); classes: >0 for a discrete
    parameter whose value is rounded to one of ``classes`` integers low..high (low=0,
    high=classes-1); doc: what it controls.
    """

    name: str
    low: float
    high: float
    kind: str
    neutral: float = 0.0
    classes: int = 0
    doc: str = ""

    @property
    def discrete(self) -> bool:
        return self.classes > 0


HAIR_STYLES = ["buzz cut", "short", "long", "bob with a fringe", "curly", "side-swept"]

# Named colour ramps (RGB in [0, 1]); a parameter in [0, 1] walks along the ramp and captions name
# the nearest entry.
SKIN_TONES = [("very light", (1.00, 0.87, 0.77)), ("light", (0.95, 0.76, 0.63)),
              ("medium", (0.86, 0.64, 0.47)), ("tan", (0.74, 0.50, 0.33)),
              ("brown", (0.52, 0.33, 0.21)), ("dark", (0.33, 0.21, 0.14))]
HAIR_COLORS = [("black", (0.08, 0.07, 0.07)), ("dark brown", (0.24, 0.15, 0.09)),
               ("brown", (0.44, 0.28, 0.15)), ("red", (0.66, 0.26, 0.11)),
               ("light brown", (0.62, 0.46, 0.28)), ("blond", (0.90, 0.76, 0.46)),
               ("platinum", (0.93, 0.88, 0.76)), ("grey", (0.66, 0.66, 0.68)),
               ("blue", (0.22, 0.36, 0.80)), ("pink", (0.92, 0.46, 0.66))]
EYE_COLORS = [("brown", (0.36, 0.20, 0.09)), ("hazel", (0.55, 0.42, 0.18)), ("green", (0.25, 0.55, 0.30)),
              ("blue", (0.25, 0.50, 0.85)), ("grey", (0.55, 0.60, 0.65))]
GLASSES_COLORS = [("black", (0.05, 0.05, 0.06)), ("brown", (0.40, 0.22, 0.10)), ("red", (0.80, 0.12, 0.12)),
                  ("blue", (0.12, 0.25, 0.75)), ("gold", (0.85, 0.68, 0.25))]

PARAMS: list[ParamSpec] = [
    # ---- identity ----
    ParamSpec("face_width", 0.40, 0.50, "identity", 0.45, doc="half width of the face oval"),
    ParamSpec("face_length", 0.50, 0.60, "identity", 0.55, doc="half height of the face oval"),
    ParamSpec("jaw", 0.0, 1.0, "identity", 0.5, doc="0 broad/square jaw .. 1 narrow pointed chin"),
    ParamSpec("head_scale", 0.92, 1.06, "identity", 1.0, doc="overall head size"),
    ParamSpec("skin_tone", 0.0, 1.0, "identity", 0.3, doc="0 very light .. 1 very dark"),
    ParamSpec("hair_color", 0.0, 1.0, "identity", 0.2, doc="position on the hair colour palette"),
    ParamSpec("hair_style", 0.0, float(len(HAIR_STYLES) - 1), "identity", 1.0, classes=len(HAIR_STYLES),
              doc="index into HAIR_STYLES (rounded)"),
    ParamSpec("eye_color", 0.0, 1.0, "identity", 0.1, doc="position on the iris palette"),
    ParamSpec("eye_spacing", 0.15, 0.20, "identity", 0.175, doc="horizontal distance eye centre - midline"),
    ParamSpec("eye_size", 0.85, 1.15, "identity", 1.0, doc="eye scale"),
    ParamSpec("brow_thickness", 0.6, 1.6, "identity", 1.0, doc="eyebrow thickness"),
    ParamSpec("nose_size", 0.75, 1.3, "identity", 1.0, doc="nose scale"),
    ParamSpec("mouth_width", 0.8, 1.25, "identity", 1.0, doc="mouth width scale"),
    ParamSpec("lipstick", 0.0, 1.0, "identity", 0.0, doc="lip colour: 0 natural .. 1 red lipstick"),
    ParamSpec("beard", 0.0, 1.0, "identity", 0.0, doc="beard density (0 none)"),
    ParamSpec("bg_hue", 0.0, 1.0, "identity", 0.6, doc="background hue"),
    ParamSpec("bg_light", 0.45, 0.95, "identity", 0.8, doc="background brightness"),
    ParamSpec("shirt_hue", 0.0, 1.0, "identity", 0.1, doc="shirt hue"),
    ParamSpec("glasses", 0.0, 1.0, "identity", 0.0, classes=2, doc="0 no glasses, 1 glasses"),
    ParamSpec("glasses_color", 0.0, 1.0, "identity", 0.0, doc="position on the frame palette"),
    # ---- expression & pose ----
    ParamSpec("smile", -1.0, 1.0, "expression", 0.0, doc="mouth curvature: -1 frown .. +1 smile"),
    ParamSpec("mouth_open", 0.0, 1.0, "expression", 0.0, doc="jaw drop"),
    ParamSpec("pout", 0.0, 1.0, "expression", 0.0, doc="narrower, fuller, protruding lips"),
    ParamSpec("smirk", -1.0, 1.0, "expression", 0.0, doc="raise the left (-) or right (+) mouth corner"),
    ParamSpec("tongue", 0.0, 1.0, "expression", 0.0, doc="tongue sticking out between the lips"),
    ParamSpec("eye_open_l", 0.0, 1.0, "expression", 0.7, doc="openness of the image-left eye (0 closed, 1 wide)"),
    ParamSpec("eye_open_r", 0.0, 1.0, "expression", 0.7, doc="openness of the image-right eye"),
    ParamSpec("brow_raise", -1.0, 1.0, "expression", 0.0, doc="both eyebrows down (-) / up (+)"),
    ParamSpec("brow_angle", -1.0, 1.0, "expression", 0.0, doc="inner brow ends up/sad (-) .. down/angry (+)"),
    ParamSpec("brow_asym", -1.0, 1.0, "expression", 0.0, doc="raise the left (-) or right (+) eyebrow only"),
    ParamSpec("tears", 0.0, 1.0, "expression", 0.0, doc="tear drops and streaks"),
    ParamSpec("blush", 0.0, 1.0, "expression", 0.0, doc="red cheeks"),
    ParamSpec("yaw", -1.0, 1.0, "expression", 0.0, doc="head turned towards image left (-) / right (+)"),
    ParamSpec("roll", -1.0, 1.0, "expression", 0.0, doc="head tilted, top towards image left (-) / right (+)"),
    ParamSpec("gaze_x", -1.0, 1.0, "expression", 0.0, doc="looking towards image left (-) / right (+)"),
    ParamSpec("gaze_y", -1.0, 1.0, "expression", 0.0, doc="looking up (-) / down (+)"),
]


class ParamSpace:
    """Index lookup and unit conversions for a list of ParamSpec (default: PARAMS)."""

    def __init__(self, specs: Sequence[ParamSpec]):
        self.specs = list(specs)
        self.names = [s.name for s in self.specs]
        if len(set(self.names)) != len(self.names):
            raise ValueError("duplicate parameter names")
        self.index = {n: i for i, n in enumerate(self.names)}
        self.identity_names = [s.name for s in self.specs if s.kind == "identity"]
        self.expression_names = [s.name for s in self.specs if s.kind == "expression"]

    def __len__(self) -> int:
        return len(self.specs)

    def idx(self, name: str) -> int:
        if name not in self.index:
            raise UserError(f"unknown face parameter {name!r} (known: {', '.join(self.names)})")
        return self.index[name]

    def _vec(self, attr: str, device=None) -> torch.Tensor:
        return torch.tensor([float(getattr(s, attr)) for s in self.specs], dtype=torch.float32, device=device)

    def low(self, device=None) -> torch.Tensor:
        """[P] lower bounds."""
        return self._vec("low", device)

    def high(self, device=None) -> torch.Tensor:
        """[P] upper bounds."""
        return self._vec("high", device)

    def neutral(self, device=None) -> torch.Tensor:
        """[P] neutral values."""
        return self._vec("neutral", device)

    def mask(self, kind: str, device=None) -> torch.Tensor:
        """[P] bool mask of parameters of ``kind`` ('identity' | 'expression')."""
        return torch.tensor([s.kind == kind for s in self.specs], device=device)

    def normalize(self, params: torch.Tensor) -> torch.Tensor:
        """[..., P] natural units -> [..., P] in [0, 1]."""
        lo, hi = self.low(params.device), self.high(params.device)
        return (params - lo) / (hi - lo)

    def denormalize(self, unit: torch.Tensor) -> torch.Tensor:
        """[..., P] in [0, 1] -> [..., P] natural units."""
        lo, hi = self.low(unit.device), self.high(unit.device)
        return lo + unit * (hi - lo)

    def clamp(self, params: torch.Tensor) -> torch.Tensor:
        """[..., P] clamped into range (discrete parameters rounded)."""
        dev = params.device
        high = device_constant([s.high for s in self.specs], torch.float32, dev)
        low = device_constant([s.low for s in self.specs], torch.float32, dev)
        disc = device_constant([bool(s.discrete) for s in self.specs], torch.bool, dev)
        out = torch.maximum(torch.minimum(params, high), low)
        return torch.where(disc, out.round(), out)

    def check(self, params: torch.Tensor, finite: bool = True) -> None:
        """Raise UserError unless ``params`` is a (with ``finite``: finite) float [N, P] tensor."""
        if not torch.is_tensor(params) or params.dim() != 2 or params.shape[1] != len(self):
            shape = tuple(params.shape) if torch.is_tensor(params) else type(params).__name__
            raise UserError(f"face parameters must be a [N, {len(self)}] tensor, got {shape}")
        if finite and not torch.isfinite(params).all():
            raise UserError("face parameters contain NaN or inf")


PARAM_SPACE = ParamSpace(PARAMS)
NUM_PARAMS = len(PARAMS)


def observable_mask(target: torch.Tensor) -> torch.Tensor:
    """Which parameters an image can show at all: target [N, P] normalised -> bool [N, P].

    Gaze is invisible when both eyes are (nearly) closed and the frame colour when there are no
    glasses; R^2 over such faces would score the oracle on unobservable noise.
    """
    nat = PARAM_SPACE.denormalize(target)
    idx = PARAM_SPACE.idx
    mask = torch.ones_like(target, dtype=torch.bool)
    eyes_open = torch.maximum(nat[:, idx("eye_open_l")], nat[:, idx("eye_open_r")]) >= 0.3
    for name in ("gaze_x", "gaze_y"):
        mask[:, idx(name)] = eyes_open
    mask[:, idx("glasses_color")] = nat[:, idx("glasses")] >= 0.5
    return mask


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def sample_params(n: int, generator: torch.Generator | None = None, device=None,
                  active_prob: float = 0.35, neutral_prob: float = 0.3) -> torch.Tensor:
    """Random faces: [n, P] in natural units.

    Identity parameters are drawn from their ranges (glasses 30 %, beards 20 % of faces). Expressions
    follow a "natural" mixture: with probability ``neutral_prob`` the face is neutral up to small
    jitter; otherwise every expression parameter independently is *active* with probability
    ``active_prob`` (uniform over its whole range) or stays near neutral. Both eyes share their
    openness except in 20 % of faces (winks). Sampling runs on the CPU generator (so results do not
    depend on ``device``) and the result is moved to ``device``.
    """
    if n < 0:
        raise UserError(f"number of faces must be >= 0, got {n}")
    for name, p in (("active_prob", active_prob), ("neutral_prob", neutral_prob)):
        if not 0.0 <= p <= 1.0:
            raise UserError(f"{name} must be a probability in [0, 1], got {p}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    if g.device.type != "cpu":
        raise UserError("sample_params needs a CPU torch.Generator (results are then device independent)")
    sp = PARAM_SPACE
    out = torch.empty(n, len(sp))
    for i, s in enumerate(sp.specs):
        if s.kind != "identity":
            continue
        if s.name == "hair_style":
            out[:, i] = torch.randint(0, s.classes, (n,), generator=g).float()
        elif s.name == "hair_color":
            # mostly natural colours; the dyed blue/pink end of the ramp for 12 % of faces
            dyed = torch.rand(n, generator=g) < 0.12
            out[:, i] = torch.where(dyed, _uniform(n, 7.5 / 9, 1.0, g), _uniform(n, 0.0, 7.5 / 9, g))
        elif s.name == "glasses":
            out[:, i] = (torch.rand(n, generator=g) < 0.3).float()
        elif s.name == "beard":
            on = torch.rand(n, generator=g) < 0.2
            out[:, i] = torch.where(on, _uniform(n, 0.3, 1.0, g), torch.zeros(n))
        elif s.name == "lipstick":
            on = torch.rand(n, generator=g) < 0.25
            out[:, i] = torch.where(on, _uniform(n, 0.3, 1.0, g), torch.zeros(n))
        else:
            out[:, i] = _uniform(n, s.low, s.high, g)
    neutral_face = torch.rand(n, generator=g) < neutral_prob
    for i, s in enumerate(sp.specs):
        if s.kind != "expression":
            continue
        span = s.high - s.low
        active = (torch.rand(n, generator=g) < active_prob) & ~neutral_face
        full = _uniform(n, s.low, s.high, g)
        jitter = s.neutral + 0.04 * span * torch.randn(n, generator=g)
        if s.name in ("tongue", "tears", "blush", "pout", "mouth_open"):
            # one-sided parameters: resting value is the lower bound, jitter only upwards
            jitter = s.neutral + (0.03 * span * torch.randn(n, generator=g)).abs()
        out[:, i] = torch.where(active, full, jitter)
    # eyes: usually open together; 20 % of faces move each eye on its own (winks)
    il, ir = sp.idx("eye_open_l"), sp.idx("eye_open_r")
    independent = torch.rand(n, generator=g) < 0.2
    shared = out[:, il] + 0.03 * torch.randn(n, generator=g)
    out[:, ir] = torch.where(independent, out[:, ir], shared)
    out = sp.clamp(out)
    return out.to(device) if device is not None else out


def neutral_params(identity: torch.Tensor) -> torch.Tensor:
    """Copy of ``identity`` [N, P] with every expression parameter set to its neutral value."""
    mask = PARAM_SPACE.mask("expression", identity.device)
    return torch.where(mask, PARAM_SPACE.neutral(identity.device), identity)


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB: h, s, v [...] in [0, 1] -> [..., 3] in [0, 1]."""
    k = device_constant([5.0, 3.0, 1.0], torch.float32, h.device)
    kk = (k + h.unsqueeze(-1) * 6.0) % 6.0
    f = torch.clamp(torch.minimum(kk, 4.0 - kk), 0.0, 1.0)
    return v.unsqueeze(-1) - v.unsqueeze(-1) * s.unsqueeze(-1) * f


def palette(t: torch.Tensor, colors: Sequence[Sequence[float]]) -> torch.Tensor:
    """Piecewise-linear colour ramp: t [...] in [0, 1] -> [..., 3]."""
    pal = device_constant(colors, torch.float32, t.device)
    m = pal.shape[0] - 1
    x = t.clamp(0, 1) * m
    i0 = x.floor().clamp(max=m - 1).long()
    w = (x - i0.float()).unsqueeze(-1)
    return pal[i0] * (1 - w) + pal[i0 + 1] * w


def nearest_palette_index(t: torch.Tensor, n_colors: int) -> torch.Tensor:
    """Index of the palette entry closest to t [...] (for captions)."""
    return (t.clamp(0, 1) * (n_colors - 1)).round().long()



def with_expressions_of(identity: torch.Tensor, expression: torch.Tensor) -> torch.Tensor:
    """Faces with the identity parameters of ``identity`` and the expression/pose of ``expression``
    (both [N, P] natural units) -> [N, P]."""
    mask = PARAM_SPACE.mask("expression", identity.device)
    return torch.where(mask, expression.to(identity.device), identity)


def identity_twins(params: torch.Tensor, generator: torch.Generator, changes: int = 1,
                   min_step: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Near-twins: copies of ``params`` [N, P] (natural units) with ``changes`` visible identity
    attributes per face moved by at least ``min_step`` of their range (discrete ones switched to
    another class). Expressions are untouched. Returns (twins [N, P], changed [N, P] bool).

    Hard negatives for identity recognition: a twin differs from its original only where a
    recogniser that ignores fine attributes (eye size, mouth width) cannot tell them apart.
    The frame colour counts only for faces with glasses (otherwise it is invisible).
    """
    if generator.device.type != "cpu":
        raise UserError("identity_twins needs a CPU torch.Generator")
    if not 1 <= changes <= len(PARAM_SPACE.identity_names) or not 0.0 < min_step <= 0.5:
        raise UserError(f"identity_twins: changes must be 1..{len(PARAM_SPACE.identity_names)} and "
                        f"min_step in (0, 0.5], got {changes}, {min_step}")
    sp, dev = PARAM_SPACE, params.device
    p = params.detach().float().cpu()
    n = p.shape[0]
    unit = sp.normalize(p)
    candidates = sp.mask("identity") & observable_mask(unit)        # [N, P]
    scores = torch.rand(n, len(sp), generator=generator).masked_fill(~candidates, -1.0)
    chosen = torch.zeros_like(candidates)
    chosen.scatter_(1, scores.topk(changes, dim=1).indices, True)
    chosen &= candidates  # a face with fewer visible identity attributes than ``changes`` gets fewer
    # continuous: a step of min_step .. min_step + 0.5 of the range, reflected back into [0, 1]
    step = min_step + 0.5 * torch.rand(n, len(sp), generator=generator)
    sign = torch.where(torch.rand(n, len(sp), generator=generator) < 0.5, -1.0, 1.0)
    moved = unit + sign * step
    moved = torch.where((moved < 0) | (moved > 1), unit - sign * step, moved).clamp(0, 1)
    out = torch.where(chosen, sp.denormalize(moved), p)  # untouched columns bit for bit
    for i, s in enumerate(sp.specs):  # discrete: any other class
        if s.discrete:
            shift = torch.randint(1, s.classes, (n,), generator=generator).float()
            out[:, i] = torch.where(chosen[:, i], (p[:, i].round() + shift) % s.classes, p[:, i])
    return torch.where(chosen, sp.clamp(out), p).to(dev), chosen.to(dev)
