"""Prompt vocabulary of the synthetic domain: concepts, phrasings, expression presets, captions.

The paper's human vocabulary has 28 concepts written "The person is {x}."; every one the renderer
can show is a Concept here (``paper=True``), plus a few pose/gaze concepts of our own. Each concept
has training phrasings (``phrasings[0]`` is the paper's sentence), held-out paraphrases that never
appear in training (zero-shot tests), and an expression *preset*: target values in natural units
for the parameters the concept moves (apply_preset interpolates towards them). Left/right are the
image's left/right, as in src.embedded.params.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from src.embedded.params import (
    EYE_COLORS,
    GLASSES_COLORS,
    HAIR_COLORS,
    HAIR_STYLES,
    PARAM_SPACE,
    SKIN_TONES,
    nearest_palette_index,
)
from src.embedded.phrasings import heldout_phrasings, training_phrasings
from src.embedded.wordings import TEMPLATE
from src.utils.errors import UserError

PAPER_CONCEPTS = [
    "smiling", "angry", "closing eyes", "winking", "shocked", "pouting", "crying", "disgusted",
    "appalled", "opening mouth", "hatred", "surprised", "aha", "annoyed", "awkward", "biting tongues",
    "blank stare", "confused", "duck lips", "incredulous", "mocking", "nervous", "no comment", "oh no",
    "serious", "stunned", "whatever", "wtf",
]


@dataclass(frozen=True)
class Concept:
    """A promptable expression.

    name: short name (the paper's term for paper concepts); phrasings: training captions
    (phrasings[0] == "The person is {name}."); heldout: paraphrases never used in training;
    preset: parameter name -> target value (natural units) at strength 1; paper: in the paper's
    vocabulary. The wordings are in src.embedded.wordings.
    """

    name: str
    phrasings: list[str]
    heldout: list[str]
    preset: dict[str, float]
    paper: bool = True
    note: str = ""


def _eyes(o: float) -> dict[str, float]:
    return {"eye_open_l": o, "eye_open_r": o}


def _c(name: str, preset: dict[str, float], paper: bool = True, note: str = "") -> Concept:
    return Concept(name, training_phrasings(name), heldout_phrasings(name), dict(preset), paper, note)


CONCEPTS: list[Concept] = [
    _c("smiling", {"smile": 0.85, **_eyes(0.55)}),
    _c("angry", {"brow_angle": 0.95, "brow_raise": -0.45, "smile": -0.5, **_eyes(0.5)}),
    _c("closing eyes", _eyes(0.0)),
    _c("winking", {"eye_open_l": 0.0, "eye_open_r": 0.75, "smile": 0.35}),
    _c("shocked", {**_eyes(1.0), "brow_raise": 1.0, "brow_angle": -0.3, "mouth_open": 0.9, "smile": -0.2}),
    _c("pouting", {"pout": 0.8, "smile": -0.35, "brow_angle": -0.3}),
    _c("crying", {"tears": 1.0, "brow_angle": -0.8, "smile": -0.7, **_eyes(0.35)}),
    _c("disgusted", {"smile": -0.6, "brow_angle": 0.5, "smirk": 0.5, "mouth_open": 0.2, **_eyes(0.4)}),
    _c("appalled", {"mouth_open": 0.55, "brow_raise": 0.6, "brow_angle": -0.6, "smile": -0.8, **_eyes(0.9)}),
    _c("opening mouth", {"mouth_open": 1.0}),
    _c("hatred", {"brow_angle": 1.0, "brow_raise": -0.8, "smile": -0.9, "mouth_open": 0.15, **_eyes(0.3)}),
    _c("surprised", {"brow_raise": 0.9, "mouth_open": 0.5, "pout": 0.35, **_eyes(0.95)}),
    _c("aha", {"brow_raise": 0.7, "smile": 0.6, "mouth_open": 0.4, **_eyes(0.9)}),
    _c("annoyed", {"brow_angle": 0.6, "smile": -0.3, "smirk": -0.3, "gaze_x": 0.6, **_eyes(0.45)}),
    _c("awkward", {"smile": 0.3, "smirk": 0.5, "blush": 0.8, "gaze_x": -0.6, "brow_angle": -0.4}),
    _c("biting tongues", {"tongue": 1.0, "mouth_open": 0.2, **_eyes(0.45)}),
    _c("blank stare", {**_eyes(0.92), "brow_raise": 0.15, "mouth_open": 0.12, "smile": 0.0, "brow_angle": 0.0,
                       "smirk": 0.0, "gaze_x": 0.0, "gaze_y": 0.0}),
    _c("confused", {"brow_asym": 0.8, "brow_angle": 0.2, "roll": 0.45, "smirk": -0.3, "gaze_y": -0.5}),
    _c("duck lips", {"pout": 1.0, "smile": 0.2, **_eyes(0.6)}),
    _c("incredulous", {"brow_asym": -0.9, "brow_raise": 0.4, "smirk": 0.35, "mouth_open": 0.2, **_eyes(0.85)}),
    _c("mocking", {"smirk": 0.9, "smile": 0.3, "brow_asym": 0.6, **_eyes(0.5)}),
    _c("nervous", {"smile": 0.15, "brow_angle": -0.7, "blush": 0.5, "gaze_x": 0.7, "mouth_open": 0.1, **_eyes(0.8)}),
    _c("oh no", {"mouth_open": 0.6, "brow_angle": -0.9, "brow_raise": 0.5, "smile": -0.5, "pout": 0.2, **_eyes(0.9)}),
    _c("serious", {"brow_angle": 0.3, "brow_raise": -0.3, "smile": -0.2, "mouth_open": 0.0, **_eyes(0.6)}),
    _c("stunned", {**_eyes(1.0), "mouth_open": 0.7, "brow_raise": 0.6, "brow_angle": 0.0, "smile": 0.0}),
    _c("whatever", {"gaze_y": -0.9, "smirk": -0.5, "brow_asym": 0.3, "roll": -0.3, **_eyes(0.6)}),
    _c("wtf", {"brow_asym": 1.0, "brow_angle": 0.5, "mouth_open": 0.4, "smile": -0.4, **_eyes(0.95)}),
    # ---- concepts of our own (pose, gaze, simple muscles) ----
    _c("frowning", {"smile": -0.85, "brow_angle": 0.2}, paper=False),
    _c("raising eyebrows", {"brow_raise": 1.0}, paper=False),
    _c("turning head left", {"yaw": -0.9}, paper=False),
    _c("turning head right", {"yaw": 0.9}, paper=False),
    _c("tilting head", {"roll": 0.8}, paper=False),
    _c("looking up", {"gaze_y": -1.0}, paper=False),
    _c("looking down", {"gaze_y": 1.0, **_eyes(0.5)}, paper=False),
    _c("looking left", {"gaze_x": -1.0}, paper=False),
    _c("looking right", {"gaze_x": 1.0}, paper=False),
    _c("blushing", {"blush": 1.0, "smile": 0.3}, paper=False),
]

UNSUPPORTED: dict[str, str] = {
    "no comment": "an attitude shown with gestures or by turning away (hand raised, shrug), not a facial "
                  "configuration; any preset here would duplicate 'serious' or 'annoyed'",
}

CONCEPT_NAMES = [c.name for c in CONCEPTS]
CONCEPT_INDEX = {c.name: i for i, c in enumerate(CONCEPTS)}
NEUTRAL_PHRASES = ["with a neutral expression", "with a relaxed face", "looking calm"]

ConceptLike = Union[Concept, str, int]


def get(concept: ConceptLike) -> Concept:
    """Concept by object, index or name (case-insensitive; "The person is x." also accepted)."""
    if isinstance(concept, Concept):
        return concept
    if isinstance(concept, bool) or not isinstance(concept, (int, str)):
        raise UserError(f"a concept is a name or an index, got {type(concept).__name__}")
    if isinstance(concept, int):
        if not 0 <= concept < len(CONCEPTS):
            raise UserError(f"concept index {concept} out of range 0..{len(CONCEPTS) - 1}")
        return CONCEPTS[concept]
    key = concept.strip().lower()
    if key.startswith("the person is ") and key.endswith("."):
        key = key[len("the person is "):-1].strip()
    if key in CONCEPT_INDEX:
        return CONCEPTS[CONCEPT_INDEX[key]]
    if key in UNSUPPORTED:
        raise UserError(f"concept {key!r} cannot be rendered by the synthetic faces: {UNSUPPORTED[key]}")
    raise UserError(f"unknown concept {concept!r} (known: {', '.join(CONCEPT_NAMES)})")


def index(concept: ConceptLike) -> int:
    """Index of a concept in CONCEPTS."""
    return CONCEPT_INDEX[get(concept).name]


def prompt(concept: ConceptLike, phrasing_index: int = 0) -> str:
    """A training phrasing of ``concept``; index 0 is "The person is {name}."."""
    c = get(concept)
    if not 0 <= phrasing_index < len(c.phrasings):
        raise UserError(f"concept {c.name!r} has phrasings 0..{len(c.phrasings) - 1}, got {phrasing_index}")
    return c.phrasings[phrasing_index]


def all_training_phrasings() -> list[str]:
    return [s for c in CONCEPTS for s in c.phrasings]


def all_heldout_phrasings() -> list[str]:
    return [s for c in CONCEPTS for s in c.heldout]


def preset_tensor(concept: ConceptLike, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [P] bool, target [P]) of a concept's preset."""
    c = get(concept)
    mask = torch.zeros(len(PARAM_SPACE), dtype=torch.bool)
    target = torch.zeros(len(PARAM_SPACE))
    for name, value in c.preset.items():
        i = PARAM_SPACE.idx(name)
        mask[i], target[i] = True, float(value)
    return mask.to(device), target.to(device)


def apply_preset(params: torch.Tensor, concept: ConceptLike | Sequence[ConceptLike] | torch.Tensor,
                 strength: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Move faces towards concept presets.

    params: [N, P] (or [P]) natural units; concept: one concept for all rows, or one per row
    (list of concepts or a [N] long tensor of indices); strength: scalar or [N], 0 = unchanged,
    1 = preset parameters at their targets. Parameters not in the preset are untouched.
    Returns [N, P] (or [P]) clamped into range.
    """
    single = params.dim() == 1
    p = params.unsqueeze(0) if single else params
    n, dev = p.shape[0], p.device
    if isinstance(concept, (Concept, str, int)) and not isinstance(concept, bool):
        mask, target = preset_tensor(concept, dev)
        mask, target = mask.expand(n, -1), target.expand(n, -1)
    else:
        items = concept.tolist() if torch.is_tensor(concept) else list(concept)
        if len(items) != n:
            raise UserError(f"got {len(items)} concepts for {n} faces")
        pairs = [preset_tensor(c) for c in items]
        mask = torch.stack([m for m, _ in pairs]).to(dev)
        target = torch.stack([t for _, t in pairs]).to(dev)
    s = torch.as_tensor(strength, dtype=p.dtype, device=dev)
    s = s.view(-1, 1) if s.dim() == 1 else s
    out = torch.where(mask, p + s * (target - p), p)
    out = PARAM_SPACE.clamp(out)
    return out[0] if single else out


# ---- identity captions ----
_HUES = [(0.04, "red"), (0.10, "orange"), (0.18, "yellow"), (0.42, "green"), (0.53, "teal"), (0.70, "blue"),
         (0.82, "purple"), (0.95, "pink"), (1.01, "red")]


def _hue_name(h: float) -> str:
    for upper, name in _HUES:
        if h < upper:
            return name
    return "red"


def identity_parts(row: torch.Tensor) -> dict[str, str]:
    """Named identity attributes of one face row [P] (natural units)."""
    v = {n: float(row[i]) for i, n in enumerate(PARAM_SPACE.names)}
    hair = HAIR_COLORS[int(nearest_palette_index(torch.tensor(v["hair_color"]), len(HAIR_COLORS)))][0]
    style = HAIR_STYLES[int(round(v["hair_style"]))]
    skin = SKIN_TONES[int(nearest_palette_index(torch.tensor(v["skin_tone"]), len(SKIN_TONES)))][0]
    eyes = EYE_COLORS[int(nearest_palette_index(torch.tensor(v["eye_color"]), len(EYE_COLORS)))][0]
    frame = GLASSES_COLORS[int(nearest_palette_index(torch.tensor(v["glasses_color"]), len(GLASSES_COLORS)))][0]
    hair_phrase = {"buzz cut": f"a {hair} buzz cut", "short": f"short {hair} hair", "long": f"long {hair} hair",
                   "bob with a fringe": f"a {hair} bob with a fringe", "curly": f"curly {hair} hair",
                   "side-swept": f"side-swept {hair} hair"}[style]
    bg = ("dark " if v["bg_light"] < 0.6 else "") + _hue_name(v["bg_hue"])
    parts = {"hair": hair_phrase, "skin": f"{skin} skin", "eyes": f"{eyes} eyes",
             "background": f"on a {bg} background", "shirt": f"in a {_hue_name(v['shirt_hue'])} shirt"}
    if v["glasses"] >= 0.5:
        parts["glasses"] = f"{frame} glasses"
    if v["beard"] >= 0.3:
        parts["beard"] = "a beard"
    if v["lipstick"] >= 0.5:
        parts["lipstick"] = "red lipstick"
    return parts


def identity_caption(row: torch.Tensor, generator: torch.Generator | None = None) -> str:
    """"a person with ..." from one face row [P]; with a generator, a random subset and order of the
    attributes (caption diversity for CLIP training), otherwise all of them in a fixed order."""
    parts = identity_parts(row)
    with_keys = [k for k in ("hair", "glasses", "beard", "lipstick", "eyes", "skin") if k in parts]
    tail_keys = ["shirt", "background"]
    if generator is not None:
        keep = torch.rand(len(with_keys), generator=generator) < 0.6
        keep[0] = keep[0] | (torch.rand(1, generator=generator) < 0.7)[0]  # usually name the hair
        order = torch.randperm(len(with_keys), generator=generator).tolist()
        with_keys = [with_keys[i] for i in order if keep[i]]
        tail_keys = [k for k in tail_keys if bool(torch.rand(1, generator=generator) < 0.3)]
    text = "a person"
    if with_keys:
        items = [parts[k] for k in with_keys]
        text += " with " + (items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1])
    for k in tail_keys:
        text += " " + parts[k]
    return text


def caption(params: torch.Tensor, concepts: Sequence[int] | torch.Tensor, generator: torch.Generator | None = None,
            identity_prob: float = 0.5, heldout: bool = False) -> list[str]:
    """Captions for faces ``params`` [N, P] showing ``concepts`` [N] (indices; -1 = no concept).

    Without a generator: the first phrasing (training) or first held-out paraphrase, no identity.
    With one: a random phrasing from the training (or held-out) list, and with probability
    ``identity_prob`` an identity sentence in front ("A person with red hair. The person is ...").
    Faces without a concept get an identity caption with a neutral phrase.
    """
    items = concepts.tolist() if torch.is_tensor(concepts) else list(concepts)
    if len(items) != params.shape[0]:
        raise UserError(f"got {len(items)} concepts for {params.shape[0]} faces")
    out = []
    for row, ci in zip(params.cpu(), items):
        ci = int(ci)
        if ci < 0:
            k = 0 if generator is None else int(torch.randint(len(NEUTRAL_PHRASES), (1,), generator=generator))
            out.append(f"{identity_caption(row, generator)} {NEUTRAL_PHRASES[k]}")
            continue
        c = CONCEPTS[ci]
        pool = c.heldout if heldout else c.phrasings
        if generator is None:
            out.append(pool[0])
            continue
        text = pool[int(torch.randint(len(pool), (1,), generator=generator))]
        if float(torch.rand(1, generator=generator)) < identity_prob:
            ident = identity_caption(row, generator)
            text = f"{ident[0].upper()}{ident[1:]}. {text[0].upper()}{text[1:]}"
        out.append(text)
    return out


__all__ = ["Concept", "CONCEPTS", "CONCEPT_NAMES", "PAPER_CONCEPTS", "UNSUPPORTED", "TEMPLATE", "get", "index",
           "prompt", "apply_preset", "preset_tensor", "caption", "identity_caption", "identity_parts",
           "all_training_phrasings", "all_heldout_phrasings"]
