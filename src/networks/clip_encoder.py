"""CLIP wrapper with differentiable tensor preprocessing.

One interface for three sources of a CLIP model:

* ``kind='open_clip'``: an open_clip architecture by ``model_name`` with ``pretrained`` either a
  pretrained tag (downloaded by open_clip, online users) or a local weights file (loaded with
  ``weights_only=True`` / safetensors);
* ``kind='embedded'``: the project's small CLIP (``src.networks.small_clip.load_small_clip``);
* ``kind='module'``: an ``nn.Module`` handed over in code (tests), with open_clip's
  ``encode_image(pixels)`` / ``encode_text(tokens)`` interface.

Images are float tensors in [-1, 1], NCHW, any size: they are mapped to [0, 1], resized (shortest
side, antialiased) and centre-cropped to the CLIP input size and standardised with the CLIP
mean/std, all with differentiable tensor ops so that losses can back-propagate into the frames.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from src.ops.resize import resize
from src.utils.constants import device_constant
from src.utils.errors import UserError

# OpenAI CLIP statistics (open_clip's OPENAI_DATASET_MEAN / STD); used when a model carries none.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESIZE_MODES = ("antialias", "pool")
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    """Read ``key`` from a dict, DictConfig or attribute object; enums become their value."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(key, default)
    else:
        value = getattr(cfg, key, default)
    return getattr(value, "value", value)


def looks_like_path(value: Optional[str]) -> bool:
    """True when ``pretrained`` names a file rather than an open_clip tag (e.g. 'openai')."""
    if not value:
        return False
    return os.sep in value or "/" in value or value.endswith(_WEIGHT_SUFFIXES) or value.startswith("~")


def preprocess_images(img: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                      interpolation: str = "bicubic") -> torch.Tensor:
    """Differentiable CLIP preprocessing.

    img: [N,3,H,W] in [-1,1] -> [N,3,size,size] standardised with ``mean``/``std``.
    The shortest side is resized to ``size`` (antialiased, as PIL does when downscaling), then the
    centre is cropped, mirroring CLIP's Resize + CenterCrop on PIL images.
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(f"expected images [N,3,H,W], got {tuple(img.shape)}")
    x = (img.float() + 1.0) * 0.5
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = resize(x, (nh, nw), mode=interpolation, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, :, top:top + size, left:left + size]
        # bicubic overshoots; the PIL pipeline stores uint8 images, i.e. clipped to [0, 1]
        x = x.clamp(0.0, 1.0)
    m, s = _channel_constants(tuple(map(float, mean)), tuple(map(float, std)), x.dtype, x.device)
    return (x - m) / s


def _channel_constants(mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device):
    """mean and std as [1,3,1,1] tensors on ``device``, made once (src/utils/constants.py)."""
    return (device_constant(mean, dtype, device).view(1, 3, 1, 1),
            device_constant(std, dtype, device).view(1, 3, 1, 1))


class ClipEncoder(nn.Module):
    """Image/text encoder returning unit-norm embeddings.

    encode_image(img [N,3,H,W] in [-1,1]) -> [N,D];  encode_text(list[str] of length N) -> [N,D].
    Attributes: ``embed_dim`` (D), ``image_size``, ``context_length``, ``kind``, ``weight_files``
    (local files the weights came from, for hashing) and ``source`` (a description for checkpoints).
    """

    def __init__(self, model: nn.Module, kind: str = "module", tokenizer: Any = None,
                 image_size: Optional[int] = None, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, context_length: Optional[int] = None,
                 interpolation: str = "bicubic", weight_files: Sequence[str] = (), source: str = ""):
        super().__init__()
        if kind not in ("open_clip", "embedded", "module"):
            raise UserError(f"clip kind '{kind}' is not one of open_clip, embedded, module")
        self.model = model
        self.kind = kind
        self.interpolation = interpolation
        self.weight_files = [str(p) for p in weight_files]
        self.source = source or kind
        if kind == "embedded":
            self.image_size = int(getattr(model, "image_size"))
            self.embed_dim = int(getattr(model, "embed_dim"))
            self.tokenizer = None
            self.context_length = getattr(model, "context_length", None)
        else:
            self.image_size = int(image_size or _infer_image_size(model))
            self.mean, self.std = tuple(mean), tuple(std)
            self.context_length = int(context_length or getattr(model, "context_length", 77))
            if tokenizer is None:
                import open_clip

                tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
            self.tokenizer = tokenizer
            self.embed_dim = int(_infer_embed_dim(model))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: Any, device: str | torch.device = "cpu", module: Optional[nn.Module] = None,
                    tokenizer: Any = None) -> "ClipEncoder":
        """Build from a ``domain.clip``-like node: ``{kind, model_name, pretrained, checkpoint}``.

        kind='module' needs ``module`` (an open_clip-style model); the others load weights.
        Missing local files raise UserError naming the file; nothing is downloaded unless
        ``pretrained`` is an open_clip tag.
        """
        kind = _cfg_get(cfg, "kind", "open_clip")
        if kind == "module":
            if module is None:
                raise UserError("clip kind 'module' needs an nn.Module passed in code")
            return cls(module, kind="module", tokenizer=tokenizer).to(device)
        if kind == "embedded":
            path = _cfg_get(cfg, "checkpoint")
            if not path:
                raise UserError("clip kind 'embedded' needs clip.checkpoint (the small CLIP weights file)")
            path = Path(path).expanduser()
            from src.networks.small_clip import load_small_clip

            model = load_small_clip(path, device)  # raises UserError naming a missing file
            stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
            files = [str(p) for p in (stem.with_suffix(".safetensors"), stem.with_suffix(".json")) if p.is_file()]
            return cls(model, kind="embedded", weight_files=files, source=f"embedded:{Path(path).name}").to(device)
        if kind == "open_clip":
            return cls._from_open_clip(cfg, device)
        raise UserError(f"clip kind '{kind}' is not one of open_clip, embedded, module")

    @classmethod
    def _from_open_clip(cls, cfg: Any, device) -> "ClipEncoder":
        import open_clip

        name = _cfg_get(cfg, "model_name")
        if not name:
            raise UserError("clip.model_name is required for kind 'open_clip' (e.g. ViT-B-32)")
        pretrained = _cfg_get(cfg, "pretrained") or _cfg_get(cfg, "checkpoint")
        files: list[str] = []
        if looks_like_path(pretrained):
            pretrained = str(Path(pretrained).expanduser())
            if not Path(pretrained).is_file():
                raise UserError(f"CLIP weights file not found: {pretrained}")
            files = [pretrained]
        if not pretrained:
            raise UserError(f"clip.pretrained is required for '{name}': a tag (e.g. openai) or a weights file; "
                            "random CLIP weights are never used silently")
        try:
            # OpenAI's CLIPs were trained with QuickGELU: their tag always gets it (open_clip would
            # otherwise build e.g. 'RN50' with exact GELU under OpenAI's weights and only warn)
            model = open_clip.create_model(name, pretrained=pretrained, device=device, weights_only=True,
                                           force_quick_gelu=pretrained == "openai")
            tokenizer = open_clip.get_tokenizer(name)
        except UserError:
            raise
        except Exception as e:  # unknown name/tag, network failure, key mismatch: one clear line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"could not load open_clip model '{name}' with pretrained '{pretrained}': {first}") from None
        return cls.wrap_open_clip(model, tokenizer, weight_files=files,
                                  source=f"open_clip:{name}:{Path(pretrained).name if files else pretrained}")

    @classmethod
    def wrap_open_clip(cls, model: nn.Module, tokenizer: Any, weight_files: Sequence[str] = (),
                       source: str = "open_clip") -> "ClipEncoder":
        """An open_clip model (already built, e.g. with random weights for a benchmark) with the
        preprocessing its own config declares (input size, mean/std, interpolation)."""
        import open_clip

        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", None)
        size = size[0] if isinstance(size, (tuple, list)) else size
        interp = pp.get("interpolation", "bicubic")
        return cls(model.eval(), kind="open_clip", tokenizer=tokenizer, image_size=size,
                   mean=pp.get("mean", CLIP_MEAN), std=pp.get("std", CLIP_STD),
                   interpolation="bicubic" if interp == "bicubic" else "bilinear",
                   weight_files=weight_files, source=source)

    # ------------------------------------------------------------------ encoding
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """list[str] -> LongTensor [N, context_length]; a prompt that does not fit raises UserError."""
        if self.tokenizer is None:
            raise RuntimeError("this encoder tokenises inside its model (kind='embedded')")
        texts = _check_texts(texts)
        ctx = self.context_length
        if hasattr(self.tokenizer, "encode") and hasattr(self.tokenizer, "sot_token_id"):
            # SimpleTokenizer: exact count = start + BPE tokens + end
            for t in texts:
                n = len(self.tokenizer.encode(t)) + 2
                if n > ctx:
                    raise UserError(f"prompt too long for CLIP ({n} tokens > context length {ctx}): '{t[:60]}...'")
            return self.tokenizer(list(texts), context_length=ctx)
        # generic tokenizers truncate silently: detect truncation by comparing with a longer context
        short = self.tokenizer(list(texts), context_length=ctx)
        longer = self.tokenizer(list(texts), context_length=ctx + 1)
        for i, t in enumerate(texts):
            if not torch.equal(short[i], longer[i, :ctx]):
                raise UserError(f"prompt too long for CLIP (more than {ctx} tokens): '{t[:60]}...'")
        return short

    def preprocess(self, img: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1,1] -> [N,3,S,S] CLIP input (differentiable)."""
        return preprocess_images(img, self.image_size, self.mean, self.std, self.interpolation)

    def encode_image(self, img: torch.Tensor, resize: str = "antialias") -> torch.Tensor:
        """img [N,3,H,W] in [-1,1] -> unit-norm embeddings [N,D] (differentiable w.r.t. img).

        resize: how a frame of another size reaches the input size: 'antialias' (CLIP's own
        Resize + CenterCrop, see :func:`preprocess_images`) or 'pool' (the authors' training code:
        ``AdaptiveAvgPool2d(size)`` of the [-1, 1] frame, no crop, no clamp, then the CLIP statistics).
        """
        if resize not in RESIZE_MODES:
            raise UserError(f"CLIP input resize '{resize}' is not one of {', '.join(RESIZE_MODES)}")
        if resize == "pool" and img.shape[-2:] != (self.image_size, self.image_size):
            img = F.adaptive_avg_pool2d(img.float(), self.image_size)
        if self.kind == "embedded":
            x = img.float()
            if x.shape[-2:] != (self.image_size, self.image_size):
                x = resize(x, (self.image_size, self.image_size), mode=self.interpolation, antialias=True).clamp(-1, 1)
            emb = self.model.encode_image(x)
        else:
            x = self.preprocess(img).to(self.device)
            emb = self.model.encode_image(x)
        return F.normalize(emb.float(), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """list[str] (N prompts) -> unit-norm embeddings [N,D]."""
        texts = _check_texts(texts)
        if self.kind == "embedded":
            emb = self.model.encode_text(list(texts))
        else:
            emb = self.model.encode_text(self.tokenize(texts).to(self.device))
        return F.normalize(emb.float(), dim=-1)

    def text_parameters(self) -> list[nn.Parameter]:
        """Parameters of the text tower (fine-tuned at a small lr in the paper)."""
        m = self.model
        if hasattr(m, "text") and isinstance(getattr(m, "text"), nn.Module):  # CustomTextCLIP
            return list(m.text.parameters())
        if hasattr(m, "visual"):
            return [p for n, p in m.named_parameters() if not n.startswith("visual.") and n != "logit_scale"
                    and n != "logit_bias"]
        if hasattr(m, "text_parameters"):
            return list(m.text_parameters())
        raise UserError("cannot tell the text tower of this CLIP model apart; use model.train.clip_finetune=none or all")

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """Alias of encode_image (so the encoder can serve as a feature extractor)."""
        return self.encode_image(img)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        texts = [texts]
    texts = list(texts)
    if not texts:
        raise UserError("no prompt given")
    for t in texts:
        if not isinstance(t, str) or not t.strip():
            raise UserError(f"prompts must be non-empty strings, got {t!r}")
    return texts


def _infer_image_size(model: nn.Module) -> int:
    visual = getattr(model, "visual", None)
    size = getattr(visual, "image_size", None) or getattr(model, "image_size", None)
    if size is None:
        raise UserError("cannot infer the CLIP input image size; pass image_size")
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _infer_embed_dim(model: nn.Module) -> int:
    if hasattr(model, "embed_dim"):
        return int(model.embed_dim)
    visual = getattr(model, "visual", None)
    if visual is not None and hasattr(visual, "output_dim"):
        return int(visual.output_dim)
    proj = getattr(model, "text_projection", None)
    if isinstance(proj, torch.Tensor):
        return int(proj.shape[-1])
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    raise UserError("cannot infer the CLIP embedding size")
