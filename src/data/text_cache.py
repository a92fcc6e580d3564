"""Cache of locked-text-tower embeddings (MiniLM) for a fixed caption list.

The LiT text tower is frozen, so its output for a known caption set never changes: training can
run from this file on machines without the MiniLM package. One safetensors file holds

* tensor ``embeddings`` [M, D] float32 (D = 384 for all-MiniLM-L6-v2, unit norm rows);
* metadata ``captions`` (JSON list of the M strings, row order), ``captions_sha256`` (hash of
  that JSON), ``model`` (the text model's name) and ``dim``.

``caption_hash`` defines the hash: sha256 of the UTF-8 JSON of the list (no spaces, in order).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor

from src.utils.errors import UserError

__all__ = ["caption_hash", "save_text_cache", "TextEmbeddingCache", "DEFAULT_TEXT_MODEL"]

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def caption_hash(captions: Sequence[str]) -> str:
    """sha256 hex of the caption list (order matters)."""
    data = json.dumps(list(captions), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def save_text_cache(path: str | os.PathLike, captions: Sequence[str], embeddings: Tensor,
                    model: str = DEFAULT_TEXT_MODEL, dtype: torch.dtype = torch.float32) -> Path:
    """Write captions [M] + embeddings [M, D] atomically to ``path`` (.safetensors); ``dtype``
    float16 halves the file (unit-norm embeddings lose ~5e-4 relative; loading gives float32)."""
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"text cache: embeddings are stored as float32 or float16, not {dtype}")
    from safetensors.torch import save_file

    from src.utils.io import atomic_write

    captions = [str(c) for c in captions]
    if len(set(captions)) != len(captions):
        raise ValueError("text cache: the caption list has duplicates")
    if embeddings.ndim != 2 or embeddings.shape[0] != len(captions):
        raise ValueError(f"text cache: embeddings {tuple(embeddings.shape)} do not match {len(captions)} captions")
    meta = {"captions": json.dumps(captions, ensure_ascii=False), "captions_sha256": caption_hash(captions),
            "model": model, "dim": str(int(embeddings.shape[1]))}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file({"embeddings": embeddings.detach().to(dtype).cpu().contiguous()}, str(tmp), metadata=meta)
    return path


class TextEmbeddingCache:
    """Read-only lookup of cached text embeddings.

    ``TextEmbeddingCache.load(path, expected_hash=None)`` checks the file's integrity (the
    stored hash must match its caption list) and, when ``expected_hash`` is given, that the
    cache was built for that caption list; both failures raise UserError.
    """

    def __init__(self, captions: List[str], embeddings: Tensor, model: str = DEFAULT_TEXT_MODEL):
        self.captions = list(captions)
        self.embeddings = embeddings.float()
        self.model = model
        self.hash = caption_hash(self.captions)
        self._row: Dict[str, int] = {c: i for i, c in enumerate(self.captions)}

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.captions)

    def __contains__(self, text: str) -> bool:
        return text in self._row

    @classmethod
    def load(cls, path: str | os.PathLike, expected_hash: Optional[str] = None) -> "TextEmbeddingCache":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"text embedding cache not found: {path} (run scripts/precompute_text_embeddings.py)")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                emb = f.get_tensor("embeddings")
        except Exception as e:  # corrupt or foreign file
            raise UserError(f"cannot read text embedding cache {path}: {e}") from e
        if "captions" not in meta or "captions_sha256" not in meta:
            raise UserError(f"{path} is not a text embedding cache (no caption list in its metadata)")
        captions = json.loads(meta["captions"])
        cache = cls(captions, emb, meta.get("model", DEFAULT_TEXT_MODEL))
        if cache.hash != meta["captions_sha256"]:
            raise UserError(f"text embedding cache {path} is corrupt: its caption hash does not match its captions")
        if emb.shape[0] != len(captions):
            raise UserError(f"text embedding cache {path} is corrupt: {emb.shape[0]} rows for {len(captions)} captions")
        if expected_hash is not None and cache.hash != expected_hash:
            raise UserError(f"text embedding cache {path} was built for a different caption list "
                            f"(hash {cache.hash[:12]} != {expected_hash[:12]}); rerun scripts/precompute_text_embeddings.py")
        return cache

    def indices(self, texts: Sequence[str]) -> Tensor:
        """Row index per text: [N] long. Unknown text -> UserError."""
        out = []
        for t in texts:
            i = self._row.get(t)
            if i is None:
                raise UserError(f"text not in the embedding cache (and MiniLM is not available to encode it): {t!r}")
            out.append(i)
        return torch.tensor(out, dtype=torch.long)

    def lookup(self, texts: Sequence[str]) -> Tensor:
        """Embeddings of ``texts``: [N, D] float32 (CPU)."""
        return self.embeddings[self.indices(texts)]

    def missing(self, texts: Sequence[str]) -> List[str]:
        """The texts that the cache does not hold (order kept)."""
        return [t for t in texts if t not in self._row]
