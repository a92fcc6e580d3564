"""The text adapter of an animator file: other wordings of its concepts, read as its prompts.

An animator learns motions for the sentences it was trained on ("The person is smiling."). A
sentence worded otherwise ("a face lit up with joy") reaches it as a CLIP text embedding elsewhere
in the text space, where its motion is weaker or another one. The adapter is one linear map A of
the text embedding, applied before the animator reads it (CLIP's losses and scores never see it):

    e' = normalise(A e),   A = I + M,   M a = 0 for every prompt a the animator was trained on

fitted in closed form (ridge regression) to take each phrasing p of a concept c close to c's
prompt a_c:  min_M  sum_p |(I + M) e_p - a_c|^2 + lam |M|^2  with M's rows orthogonal to the prompts'
span. The prompts themselves keep their embeddings (to float rounding), so what the animator does
with them is unchanged; only the other wordings move. ``scripts/fit_text_adapter.py`` fits one from
phrasings per concept (the embedded vocabulary's training phrasings, or a JSON file of your own) and
writes it into the animator file.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.utils.errors import UserError

__all__ = ["TextAdapter", "TextAdapting", "fit_text_adapter"]

#: ridge weight of the fit, chosen on a random fifth of the embedded vocabulary's training
#: phrasings held out from the fit (nearest prompt right for 0.944 of them; 0.943 / 0.936 / 0.906
#: at 0.001 / 0.1 / 1)
DEFAULT_RIDGE = 0.01


def fit_text_adapter(phrasings: torch.Tensor, targets: torch.Tensor, anchors: torch.Tensor,
                     ridge: float = DEFAULT_RIDGE) -> torch.Tensor:
    """A [D, D] (float32) of the module docstring.

    phrasings [n, D]: embeddings of the phrasings; targets [n, D]: the embedding of each one's
    concept prompt; anchors [K, D]: the prompts' embeddings, which A leaves as they are.
    """
    if phrasings.ndim != 2 or targets.shape != phrasings.shape or anchors.ndim != 2 \
            or anchors.shape[1] != phrasings.shape[1]:
        raise UserError(f"text adapter: phrasings {tuple(phrasings.shape)}, targets {tuple(targets.shape)} and "
                        f"anchors {tuple(anchors.shape)} must be [n, D], [n, D] and [K, D]")
    if len(phrasings) == 0 or len(anchors) == 0:
        raise UserError("text adapter: needs at least one phrasing and one prompt")
    if not ridge > 0:
        raise UserError(f"text adapter: the ridge weight must be > 0, got {ridge}")
    d = phrasings.shape[1]
    e, t = phrasings.double(), targets.double()
    basis, sv, _ = torch.linalg.svd(anchors.double().t(), full_matrices=False)     # [D, K]
    basis = basis[:, sv > sv.max() * 1e-9]
    free = torch.eye(d, dtype=torch.float64) - basis @ basis.t()                   # off the prompts' span
    x = e @ free
    n_t = torch.linalg.solve(x.t() @ x + ridge * torch.eye(d, dtype=torch.float64), x.t() @ (t - e)).t()
    return (torch.eye(d, dtype=torch.float64) + n_t @ free).float()


class TextAdapter(nn.Module):
    """e [N, D] -> normalise(e A^T); A in the buffer ``weight`` (the identity until loaded)."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("weight", torch.eye(dim))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(emb.float() @ self.weight.t(), dim=-1)


class TextAdapting:
    """``adapt_text`` and ``set_text_adapter``: a mixin of
    :class:`~src.pipeline.face_animator.FaceAnimator` (it uses its ``text_adapter``: a
    :class:`TextAdapter`, or None when the file has none, ``clip``, ``config``, ``inference_cfg``,
    ``device`` and the trained weights' keys)."""

    text_adapter: Optional[TextAdapter]

    def set_text_adapter(self, weight: Optional[torch.Tensor]) -> None:
        """Give the pipeline the adapter A [D, D] (None: none); ``save_pretrained`` then writes it."""
        dim = int(self.clip.embed_dim)
        if weight is not None and tuple(weight.shape) != (dim, dim):
            raise UserError(f"text adapter of shape {tuple(weight.shape)} for {dim}-d text embeddings")
        self.text_adapter = None
        if weight is not None:
            self.text_adapter = TextAdapter(dim).to(self.device)
            self.text_adapter.weight.copy_(weight)
        self.config.setdefault("inference", {})["text_adapter"] = weight is not None
        self.inference_cfg.text_adapter = weight is not None
        keys = self._trainable_keys - {"text_adapter.weight"}
        self._trainable_keys = keys | {"text_adapter.weight"} if weight is not None else keys

    def adapt_text(self, text_emb: torch.Tensor, use: Optional[bool] = None) -> torch.Tensor:
        """The animator's text input: ``text_emb`` through the file's adapter (use None: when it
        has one; False: never; True: it must have one)."""
        if use is None:
            use = self.text_adapter is not None
        if not use:
            return text_emb
        if self.text_adapter is None:
            raise UserError("this animator file has no text adapter (python scripts/fit_text_adapter.py adds one)")
        return self.text_adapter(text_emb).to(text_emb.dtype)
