"""Generator samples in the small CLIP's training batches, captioned from what the oracle reads on them.

The animator is trained against the small CLIP on faces the generator draws, not on renders; a CLIP that
has seen only renders can read a generated face as a concept the oracle does not see there. With
``generated_faces`` set up (``model.generator_fraction`` > 0), a share of every batch comes from the
frozen generator: z ~ N(0, I) drawn from the training's CPU generator (whose state the checkpoints keep,
so a resumed run draws the same faces), rendered with constant noise, read by the frozen attribute oracle
and captioned with the concept the reading clearly expresses (``reading_concepts``), through the render
path's own caption sampling (``clip_pairs.caption_faces``): a training phrasing of the concept (never a
held-out one) or a one-attribute identity caption of what the oracle reads. A face that expresses no
concept gets an identity caption, as a render without a concept does.

Both networks are plain attributes of a plain object: they stay out of the CLIP module's tree, hence out
of its state_dict, its checkpoints and its exported file.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from src.embedded import PARAM_SPACE, vocabulary
from src.embedded.oracle import load_oracle, preset_reach
from src.embedded.training.clip_pairs import caption_faces
from src.ops.resize import resize
from src.utils.errors import UserError

__all__ = ["GeneratedFaces", "generated_faces", "reading_concepts"]


def reading_concepts(unit: Tensor, min_reach: float = 0.5, min_alignment: float = 0.7,
                     margin: float = 0.1) -> Tensor:
    """The concept each oracle reading clearly expresses: unit [N, P] (the oracle's outputs, normalised
    parameters) -> [N] long concept indices, -1 where none.

    Each reading is compared with the same face at rest (its expression parameters at their neutral
    values). For a concept k, reach_k is how far the reading moved toward k's preset (``preset_reach``,
    the reach the evaluation reports) and alignment_k the cosine between that move, over every
    expression parameter, and the preset's direction: a face that also moved what k leaves alone aligns
    less. A face expresses k when reach_k >= ``min_reach``, alignment_k >= ``min_alignment`` and
    alignment_k exceeds every other concept's by ``margin``; concepts whose presets nearly coincide
    (angry and hatred, shocked and stunned) are then left uncaptioned rather than guessed.
    """
    expr = PARAM_SPACE.mask("expression", unit.device)
    rest = torch.where(expr, PARAM_SPACE.normalize(PARAM_SPACE.neutral(unit.device)), unit)
    moved = (unit - rest).norm(dim=1).clamp_min(1e-8)
    reach, align = [], []
    for concept in vocabulary.CONCEPTS:
        r, required = preset_reach(rest, unit, concept)
        reach.append(r)
        align.append(r * required.norm(dim=1) / moved)  # (move . required) / (|move| |required|)
    reach, align = torch.stack(reach, 1), torch.stack(align, 1)
    candidate = torch.where(reach >= min_reach, align, torch.full_like(align, -2.0))
    best = candidate.argmax(1)
    top = candidate.gather(1, best[:, None])[:, 0]
    runner_up = align.scatter(1, best[:, None], -2.0).amax(1)
    clear = (top >= min_alignment) & (top - runner_up >= margin)
    return torch.where(clear, best, torch.full_like(best, -1))


class GeneratedFaces:
    """The frozen generator and oracle of the CLIP's generated training faces.

    generator_path: a StyleGAN2 file (any format ``load_generator`` reads); oracle_path: an oracle file
    written by ``save_oracle``; psi: truncation of the sampled faces (1 = none); min_reach,
    min_alignment, margin: the captioning thresholds of ``reading_concepts``.
    """

    def __init__(self, generator_path: str, oracle_path: str, psi: float = 1.0, min_reach: float = 0.5,
                 min_alignment: float = 0.7, margin: float = 0.1):
        from src.stylegan import load_generator

        self.psi, self.min_reach, self.min_alignment, self.margin = psi, min_reach, min_alignment, margin
        self._nets = (load_generator(generator_path).requires_grad_(False).eval(),
                      load_oracle(oracle_path).requires_grad_(False).eval())
        self._device = torch.device("cpu")

    def networks(self, device) -> tuple:
        """(generator, oracle) on ``device`` (moved there on first use)."""
        device = torch.device(device)
        if device != self._device:
            self._nets = tuple(net.to(device) for net in self._nets)
            self._device = device
        return self._nets

    @staticmethod
    def count(fraction: float, batch_size: int) -> int:
        """Generated faces in a batch of ``batch_size``: the share ``fraction``, at least one."""
        return min(batch_size, max(1, round(fraction * batch_size)))

    @torch.no_grad()
    def read(self, n: int, generator: torch.Generator, device) -> tuple[Tensor, Tensor]:
        """``n`` generated faces and their readings: (images [n,3,R,R] in [-1, 1] on ``device``, the
        oracle's outputs [n, P] on the CPU); z is drawn from ``generator`` (a CPU one)."""
        G, oracle = self.networks(device)
        z = torch.randn(n, G.z_dim, generator=generator).to(self._device)
        c = torch.zeros(n, G.c_dim, device=self._device)
        img = G(z, c, truncation_psi=self.psi, noise_mode="const").float().clamp(-1, 1)
        return img, oracle(img).float().cpu()

    def concepts(self, unit: Tensor) -> Tensor:
        """[N] concept indices (-1 = none) of readings ``unit`` [N, P], with this object's thresholds."""
        return reading_concepts(unit, self.min_reach, self.min_alignment, self.margin)

    def sample(self, n: int, generator: torch.Generator, resolution: int, device, identity_prob: float = 0.3,
               allowed: Optional[set] = None) -> tuple[Tensor, List[str], Tensor]:
        """(images [n,3,resolution,resolution] on ``device``, captions, concepts [n] long, -1 = none),
        as ``clip_pairs.make_pairs`` returns for renders; captions as ``caption_faces`` makes them from
        the reading (``identity_prob``, ``allowed`` as there)."""
        img, unit = self.read(n, generator, device)
        concepts = self.concepts(unit)
        reading = PARAM_SPACE.clamp(PARAM_SPACE.denormalize(unit))
        captions = caption_faces(reading, concepts, generator, identity_prob, allowed)
        if img.shape[-1] != resolution:
            img = resize(img, (resolution, resolution), mode="bilinear", antialias=True).clamp(-1, 1)
        return img, captions, concepts


def generated_faces(fraction: float, generator_path: Optional[str], oracle_path: Optional[str], psi: float,
                    min_reach: float, min_alignment: float, margin: float) -> Optional[GeneratedFaces]:
    """The ``model.generator_*`` and ``model.caption_*`` options checked (one-line UserErrors) and, when
    ``fraction`` > 0, the GeneratedFaces they describe; None when it is 0 (training on renders only)."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"model.generator_fraction must be in [0, 1], got {fraction}")
    if not 0.0 < psi <= 2.0:
        raise UserError(f"model.generator_psi must be in (0, 2], got {psi}")
    if not 0.0 < min_reach <= 2.0:
        raise UserError(f"model.caption_min_reach must be in (0, 2], got {min_reach}")
    if not 0.0 < min_alignment <= 1.0:
        raise UserError(f"model.caption_min_alignment must be in (0, 1], got {min_alignment}")
    if not 0.0 <= margin < 2.0:
        raise UserError(f"model.caption_margin must be in [0, 2), got {margin}")
    if fraction == 0.0:
        return None
    for key, path in (("generator_path", generator_path), ("oracle_path", oracle_path)):
        if not path:
            raise UserError(f"model.{key} is not set (model.generator_fraction={fraction} samples the generator)")
    return GeneratedFaces(str(generator_path), str(oracle_path), psi, min_reach, min_alignment, margin)
