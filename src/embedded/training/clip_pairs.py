"""The (render, caption) pairs of the small CLIP's training on the synthetic domain.

``build_caption_list`` is the finite caption universe (every caption has a cached text
embedding); ``make_pairs`` renders faces, each with a concept applied (or none), and
``caption_faces`` captions them with a training phrasing of the concept or a one-attribute identity
description.
"""
from __future__ import annotations

from typing import List, Optional

import torch

__all__ = ["build_caption_list", "caption_faces", "identity_captions", "make_pairs", "neutral_captions"]

_WITH_KEYS = ("hair", "glasses", "beard", "lipstick", "eyes", "skin")


def _identity_caption_of(key: str, part: str) -> str:
    return f"a person with {part}" if key in _WITH_KEYS else f"a person {part}"


def identity_captions(num_samples: int = 4000, seed: int = 0) -> List[str]:
    """Every one-attribute identity caption the renderer's faces produce (sorted).

    Enumerated by describing ``num_samples`` faces drawn with identity attributes spread
    uniformly (hair colour x style, glasses colour, skin, eyes, shirt and background hues), so
    all palette entries are reached; deterministic for a given seed.
    """
    from src.embedded import PARAM_SPACE, sample_params, vocabulary

    g = torch.Generator().manual_seed(seed)
    p = sample_params(num_samples, g, "cpu")
    # Spread the attributes whose natural distribution is skewed, so rare values are described.
    for name in ("hair_color", "eye_color", "skin_tone", "glasses_color", "bg_hue", "shirt_hue", "lipstick", "beard"):
        spec = PARAM_SPACE.specs[PARAM_SPACE.idx(name)]
        p[:, PARAM_SPACE.idx(name)] = spec.low + (spec.high - spec.low) * torch.rand(num_samples, generator=g)
    for name, frac in (("glasses", 0.5),):
        p[:, PARAM_SPACE.idx(name)] = (torch.rand(num_samples, generator=g) < frac).float()
    lo, hi = PARAM_SPACE.specs[PARAM_SPACE.idx("bg_light")].low, PARAM_SPACE.specs[PARAM_SPACE.idx("bg_light")].high
    p[:, PARAM_SPACE.idx("bg_light")] = lo + (hi - lo) * torch.rand(num_samples, generator=g)
    out = set()
    for row in p:
        for key, part in vocabulary.identity_parts(row).items():
            out.add(_identity_caption_of(key, part))
    return sorted(out)


def neutral_captions() -> List[str]:
    from src.embedded import vocabulary

    return [f"a person {p}" for p in vocabulary.NEUTRAL_PHRASES]


def build_caption_list() -> List[str]:
    """The finite caption universe of the synthetic domain, in a fixed order:
    training phrasings, neutral captions, identity captions, held-out paraphrases (deduplicated)."""
    from src.embedded import vocabulary

    seq = (vocabulary.all_training_phrasings() + neutral_captions() + identity_captions()
           + vocabulary.all_heldout_phrasings())
    seen, out = set(), []
    for s in seq:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def caption_faces(params: torch.Tensor, concepts: torch.Tensor, generator: torch.Generator,
                  identity_prob: float = 0.3, allowed: Optional[set] = None) -> List[str]:
    """The training caption of each face: params [n, P] (natural units), concepts [n] long (-1 = none).

    A face with a concept gets a random training phrasing of it, or with ``identity_prob`` a
    one-attribute identity caption; a face without one gets an identity caption (a neutral caption
    when it is not in ``allowed``, the captions with a cached embedding)."""
    from src.embedded import vocabulary

    captions: List[str] = []
    for i in range(len(concepts)):
        ci = int(concepts[i])
        use_identity = float(torch.rand(1, generator=generator)) < identity_prob
        if use_identity or ci < 0:
            parts = list(vocabulary.identity_parts(params[i]).items())
            k = int(torch.randint(len(parts), (1,), generator=generator))
            cap = _identity_caption_of(*parts[k])
            if allowed is None or cap in allowed:
                captions.append(cap)
                continue
        if ci < 0:
            nc = neutral_captions()
            captions.append(nc[int(torch.randint(len(nc), (1,), generator=generator))])
        else:
            ph = vocabulary.CONCEPTS[ci].phrasings
            captions.append(ph[int(torch.randint(len(ph), (1,), generator=generator))])
    return captions


def make_pairs(n: int, generator: torch.Generator, resolution: int, device, identity_prob: float = 0.3,
               neutral_prob: float = 0.1, jitter: float = 0.15, strength=(0.7, 1.0),
               allowed: Optional[set] = None, concepts_only: bool = False):
    """Render ``n`` faces and caption them.

    Returns (images [n,3,R,R] on ``device``, captions list[str], concepts [n] long (-1 = none)).
    A face with a concept starts from a near-neutral expression (``jitter`` of its random
    expression kept) and moves to the concept's preset with a random ``strength``; its caption is
    a training phrasing, or with ``identity_prob`` a one-attribute identity caption. ``allowed``
    (a set of captions) restricts identity captions to those with a cached embedding.
    """
    from src.embedded import PARAM_SPACE, render, sample_params, vocabulary

    K = len(vocabulary.CONCEPTS)
    params = sample_params(n, generator, "cpu")
    concepts = torch.randint(0, K, (n,), generator=generator)
    if not concepts_only:
        concepts = torch.where(torch.rand(n, generator=generator) < neutral_prob, torch.full_like(concepts, -1), concepts)
    expr = PARAM_SPACE.mask("expression")
    neutral = PARAM_SPACE.neutral()
    calm = neutral + jitter * (params - neutral)
    params = torch.where(expr, calm, params)
    rows = (concepts >= 0).nonzero().flatten()
    if rows.numel():
        s = strength[0] + (strength[1] - strength[0]) * torch.rand(rows.numel(), generator=generator)
        params[rows] = vocabulary.apply_preset(params[rows], concepts[rows], s)
    captions = caption_faces(params, concepts, generator, identity_prob, allowed)
    dev = torch.device(device)
    if dev.type == "cuda":
        params = params.pin_memory().to(dev, non_blocking=True)
    img = render(params.to(dev), resolution)
    return img, captions, concepts
