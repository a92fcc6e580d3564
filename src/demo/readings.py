"""Per-frame readings of one video, as plot-ready columns {frame, value, series}:

* CLIP similarity: the cosine of each frame's CLIP image embedding with each prompt's text embedding
  (the pipeline's own CLIP, as ``src.eval.metrics.text_alignment`` reads the last frame);
* the oracle's reach (embedded domain): for each prompt that is one of its concepts, how far frame t
  has moved from frame 0 toward the concept's target attributes (1 = reached), the ``reach`` of
  ``src.embedded.oracle.oracle_scores`` applied to the pair (frame 0, frame t).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

Curve = dict[str, list]


def _distinct(prompts: Sequence[str]) -> list[str]:
    from src.data.prompts import distinct_in_order

    return distinct_in_order(list(prompts))


def _curve(values: torch.Tensor, names: Sequence[str]) -> Curve:
    """values [T, K] -> columns of T * K rows, frame-major per series."""
    out: Curve = {"frame": [], "value": [], "series": []}
    for k, name in enumerate(names):
        for t, v in enumerate(values[:, k].tolist()):
            out["frame"].append(t)
            out["value"].append(round(float(v), 5))
            out["series"].append(name)
    return out


def short_label(prompt: str, template: str = "{}", width: int = 28) -> str:
    """A legend's name for a prompt: what fills the domain's template ("The person is winking." ->
    "winking"), else the prompt, cut to ``width`` characters."""
    prefix, _, suffix = template.partition("{}")
    if prefix and prompt.startswith(prefix) and prompt.endswith(suffix) and len(prompt) > len(prefix) + len(suffix):
        prompt = prompt[len(prefix):len(prompt) - len(suffix)].strip()
    return prompt if len(prompt) <= width else prompt[:width - 1].rstrip() + "…"


@torch.no_grad()
def clip_similarity(clip, frames: torch.Tensor, prompts: Sequence[str], template: str = "{}") -> Curve:
    """frames [T,3,H,W] in [-1,1]; one series per distinct prompt, named by ``short_label``."""
    names = _distinct(prompts)
    image = clip.encode_image(frames).float()
    text = clip.encode_text(names).float().to(image.device)
    return _curve(image @ text.t(), [short_label(n, template) for n in names])


def concept_of(prompt: str) -> Optional[str]:
    """The embedded vocabulary's concept a prompt names ("The person is winking." -> winking), or None."""
    from src.embedded.vocabulary import get
    from src.utils.errors import UserError

    try:
        return get(prompt).name
    except UserError:
        return None


@torch.no_grad()
def oracle_reach(oracle, frames: torch.Tensor, prompts: Sequence[str]) -> tuple[Curve, list[str]]:
    """(one series per prompt that names a concept, the prompts that name none). frames [T,3,H,W]."""
    from src.embedded.oracle import oracle_scores

    concepts, unread = [], []
    for prompt in _distinct(prompts):
        concept = concept_of(prompt)
        (concepts if concept else unread).append(concept or prompt)
    if not concepts:
        return _curve(frames.new_zeros(frames.shape[0], 0), []), unread
    pairs = torch.stack([frames[:1].expand_as(frames), frames], dim=1)  # [T, 2, 3, H, W]
    reach = torch.stack([oracle_scores(oracle, pairs, c)["reach"] for c in concepts], dim=1)  # [T, K]
    return _curve(reach, concepts), unread
