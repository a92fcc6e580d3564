"""The animator's training objective: one forward of a batch and every loss term of the paper.

A mixin of :class:`~src.systems.animator.AnimatorModule`: it uses the module's pipeline parts
(``animator``, ``clip``, ``generator`` via ``synthesize``/``render_image``), the loss networks
(``loss_clip``, ``perceptual``, ``identity_net``), ``loss_cfg`` and the typed groups ``net_cfg`` / ``train_cfg``.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from src.data.augment import augmented_views, label_preserving_pipe
from src.losses.animator import (contrastive_clip_loss, cosine_clip_loss, endpoint_loss, identity_loss,
                                 latent_reg_loss, lpips_identity_loss, smoothness_loss, total_loss)
from src.utils.errors import UserError


class AnimatorObjective:
    """compute_losses(batch) -> (total, {term: value}, outputs) and the choices it rests on."""

    def _text_embedding(self, prompts) -> torch.Tensor:
        return self._embed(self.clip.encode_text, prompts, self.train_cfg.clip_finetune != "none")

    def _image_embedding(self, clip_image: torch.Tensor) -> torch.Tensor:
        """The animator's image embedding; with the whole CLIP fine-tuned (clip_finetune=all, the
        authors' code) the image tower gets gradients through the image mapper."""
        return self._embed(self.clip.encode_image, clip_image, self.train_cfg.clip_finetune == "all")

    @staticmethod
    def _embed(encode, x, trains: bool) -> torch.Tensor:
        """encode(x), with gradients only when that tower trains."""
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            return encode(x)

    def contrastive_groups(self, n: int) -> Optional[torch.Tensor]:
        """BoolTensor [n,n]: which local prompts each image contrasts against when loss.local_group
        splits the local batch (one GPU standing in for several GPUs' local batches); None: all."""
        g = int(self.loss_cfg.get("local_group") or 0)
        if g <= 0 or g >= n or self.loss_cfg.get("negatives") != "local":
            return None
        if n % g:
            raise UserError(f"loss.local_group={g} does not divide the batch of {n} prompts")
        group = torch.arange(n) // g
        return group[:, None] == group[None, :]

    def contrastive_candidates(self, batch: Mapping[str, Any]) -> tuple[list[str], torch.Tensor]:
        """(candidate prompts [M], positive [N]) of the contrastive loss: the negatives of every image
        and the row of each image's own prompt among them.

        loss.negatives 'global' and batch["candidates"] (the data module's distinct prompts of the
        whole GLOBAL batch, the same on every DDP rank) present: a rank then computes the union batch's
        loss on its rows. 'local' (the authors' code), or no candidates: the local captions, which must
        be distinct (a repeated prompt would be its own negative).
        """
        captions = list(batch["caption"])
        if batch.get("candidates") is None or self.loss_cfg.get("negatives") == "local":
            if len(set(captions)) != len(captions):
                raise UserError("the contrastive loss needs distinct prompts in a batch (or a batch['candidates'] "
                                "list of the distinct prompts to contrast against)")
            return captions, torch.arange(len(captions))
        candidates = list(batch["candidates"])
        if len(set(candidates)) != len(candidates):
            raise UserError("batch['candidates'] must list distinct prompts")
        row = {c: j for j, c in enumerate(candidates)}
        missing = sorted({c for c in captions if c not in row})
        if missing:
            raise UserError(f"batch['candidates'] lacks the batch's prompts {missing}")
        return candidates, torch.tensor([row[c] for c in captions])

    def clip_loss_weight(self) -> tuple[str, float]:
        """('contrastive'|'cosine', weight) of the text-alignment term."""
        w = self.loss_cfg["contrastive"]
        if w == 0:
            return "cosine", float(self.train_cfg.cosine_fallback_weight)
        return ("cosine" if self.train_cfg.clip_loss == "cosine" else "contrastive"), w

    def compute_losses(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """One training forward: returns (total, {term: value}, outputs).

        batch: caption list[str] (N), seed [N] (latent and h_0 seeds) or ws [N,L,C] / [N,C], and
        optionally candidates list[str] (M) for the contrastive loss (see contrastive_candidates) and
        photo [N,3,S,S] in [-1,1]: the real photo of each latent (data.clip_image=photo, the authors'
        code), which the CLIP image tower sees and LPIPS compares against instead of G(w_input).
        Every term is a mean over the N local samples, so with equal N per DDP rank the gradient
        average of DDP is the gradient of the union batch. Nothing here draws from a random stream
        shared by the batch's samples when clip_views = 0 and the generator's noise_mode is not
        'random' (else equivalence with one process holds in distribution only).
        """
        captions = list(batch["caption"])
        form, w_clip = self.clip_loss_weight()
        if form == "contrastive":
            candidates, positive = self.contrastive_candidates(batch)  # validate before the expensive part
        T = int(self.train_cfg.frames)
        w_input = self._batch_latents(batch)
        with torch.no_grad():
            image = self.render_image(w_input)  # the generator's own image of w_input
        photo = batch.get("photo")
        target = photo.to(image.device).float() if photo is not None else image  # what the face should look like
        image_emb = self._image_embedding(target) if self.animator.image_branch else None
        # with data.phrasings the animator reads another wording of the same concept
        text_emb = self._text_embedding(list(batch.get("input_caption") or captions))
        out = self.animator(w_input, text_emb, image_emb, T, decay="none", h0_seeds=self._h0_seeds(batch))
        ws = out["ws"]
        if self.net_cfg.variant == "ours" and self.noise_mode != "random":
            # frame 0 is the input face exactly (ws[:,0] == w_input): render only frames 1..T-1
            frames = torch.cat([image[:, None], self.synthesize(ws[:, 1:])], dim=1)
        else:
            frames = self.synthesize(ws)

        terms: dict[str, torch.Tensor] = {}
        lc = self.loss_clip
        views = 1 + int(self.train_cfg.clip_views)
        last = frames[:, -1]
        if views > 1:
            # random augmentation from the global RNG: per rank, so DDP matches one process in distribution only
            pipe = self._view_pipes.setdefault(str(last.device), label_preserving_pipe(p=1.0).to(last.device))
            last = augmented_views(last, pipe, views - 1, float(self.train_cfg.clip_view_noise))
        img_last = lc.encode_image(last, resize=self.loss_cfg.get("resize_224", "antialias")).view(
            views, len(captions), -1)
        if form == "contrastive":
            with torch.no_grad():
                txt = lc.encode_text(candidates)  # [M,D], the same on every rank
            positive = positive.to(txt.device)
            allowed = self.contrastive_groups(len(captions))
            terms[form] = torch.stack([contrastive_clip_loss(e, txt, self.loss_cfg["tau"], positive=positive,
                                                             allowed=allowed) for e in img_last]).mean()
        else:
            with torch.no_grad():
                txt = lc.encode_text(captions)
            terms[form] = torch.stack([cosine_clip_loss(e, txt) for e in img_last]).mean()
        if self.perceptual is not None and self.animator.image_branch:  # a text-only animator has no input image
            terms["lpips"] = lpips_identity_loss(self.perceptual, target, frames[:, 0], frames[:, -1])
        # on the part of the offsets that moves over time (paper: the mapped motion alone, see RecurrentAnimator)
        terms["smoothness"] = smoothness_loss(out["motion_offsets"])
        terms["endpoint"] = endpoint_loss(out["motion_offsets"])
        terms["latent"] = latent_reg_loss(ws, w_input, self.loss_cfg.get("latent_reduction", "mean"))
        if self.identity_net is not None:
            terms["identity"] = identity_loss(self.identity_net, frames, image)
        weights = {k: self.loss_cfg[k] for k in ("lpips", "smoothness", "endpoint", "latent", "identity")}
        weights[form] = w_clip
        total = total_loss(terms, weights)
        return total, terms, dict(frames=frames, ws=ws, image=image, w_input=w_input)
