"""Fit an animator file's text adapter (``src/pipeline/text_adapter.py``) and write it into the file.

    python scripts/fit_text_adapter.py [--animator assets/animator_synthetic.safetensors]
        [--phrasings training | FILE.json] [--ridge 0.01] [--out PATH] [--remove]

--phrasings: ``training`` (the embedded vocabulary's training phrasings of all its concepts, never
its held-out paraphrases; the embedded domain only), or a JSON file {"concept": ["a sentence", ...]}
with phrasings for every concept the animator was trained on. Each concept's anchor is the domain's
prompt for it (``prompts.template``), which the adapter leaves as it is. --out: where to write the
animator file (default: the one read, replaced atomically); --remove writes it without an adapter.

Prints a check of the fit: a second fit leaves out a random fifth of the phrasings, and on them,
how often the nearest anchor is the phrasing's own concept's, without and with the adapter.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def embed(clip, texts: list[str]):
    import torch

    with torch.no_grad():
        return torch.cat([clip.encode_text(texts[i:i + 512]).float().cpu() for i in range(0, len(texts), 512)])


def nearest_right(emb, labels, anchors, adapter=None) -> float:
    """Share of rows whose nearest anchor (cosine) is their own."""
    import torch.nn.functional as F

    z = F.normalize(emb if adapter is None else emb @ adapter.t(), dim=1)
    return float(((z @ F.normalize(anchors, dim=1).t()).argmax(1) == labels).float().mean())


def run(args) -> None:
    import torch

    from src.eval.phrasings import resolve_phrasings
    from src.pipeline import FaceAnimator
    from src.pipeline.text_adapter import fit_text_adapter
    from src.utils.errors import UserError

    if not args.ridge > 0:
        raise UserError(f"--ridge must be > 0, got {args.ridge}")
    path = Path(args.animator).expanduser()
    out = Path(args.out).expanduser() if args.out else path
    pipe = FaceAnimator.from_pretrained(path)
    if args.remove:
        pipe.set_text_adapter(None)
        print(f"wrote {pipe.save_pretrained(out, relative_to=out.parent)} without a text adapter")
        return
    domain = pipe.config["domain"]
    concepts = list(domain["prompts"]["concepts"])
    if args.phrasings == "training" and domain.get("name") == "synthetic":
        from src.embedded import vocabulary

        concepts = list(vocabulary.CONCEPT_NAMES)
    if args.phrasings in ("heldout", "template"):
        raise UserError(f"--phrasings {args.phrasings}: fit on the training phrasings or a .json file of your own "
                        "(the held-out paraphrases are for evaluation)")
    phrasings = resolve_phrasings(args.phrasings, domain, concepts)
    template = str(domain["prompts"]["template"])
    anchors = embed(pipe.clip, [template.format(c) for c in concepts])
    texts, labels = [], []
    for k, c in enumerate(concepts):
        texts += phrasings[c]
        labels += [k] * len(phrasings[c])
    emb, labels = embed(pipe.clip, texts), torch.tensor(labels)
    print(f"{len(texts)} phrasings of {len(concepts)} concepts, {emb.shape[1]}-d text embeddings, ridge {args.ridge}")
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(0))
    fit_rows, check_rows = order[: len(order) * 4 // 5], order[len(order) * 4 // 5:]
    if len(check_rows):
        check = fit_text_adapter(emb[fit_rows], anchors[labels[fit_rows]], anchors, args.ridge)
        print(f"left-out fifth ({len(check_rows)} phrasings), nearest anchor their own: "
              f"{nearest_right(emb[check_rows], labels[check_rows], anchors):.3f} without the adapter, "
              f"{nearest_right(emb[check_rows], labels[check_rows], anchors, check):.3f} with it")
    weight = fit_text_adapter(emb, anchors[labels], anchors, args.ridge)
    moved = (anchors @ weight.t() - anchors).abs().max().item()
    print(f"all phrasings: {nearest_right(emb, labels, anchors):.3f} -> {nearest_right(emb, labels, anchors, weight):.3f}; "
          f"the prompts move by at most {moved:.1e}")
    pipe.set_text_adapter(weight)
    print(f"wrote {pipe.save_pretrained(out, relative_to=out.parent)} with its text adapter")


def main(argv=None) -> int:
    from src.pipeline.text_adapter import DEFAULT_RIDGE
    from src.utils.errors import exit_code

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--animator", default=str(ROOT / "assets" / "animator_synthetic.safetensors"))
    ap.add_argument("--phrasings", default="training", help="training (the embedded vocabulary) | a .json file")
    ap.add_argument("--ridge", type=float, default=DEFAULT_RIDGE)
    ap.add_argument("--out", default=None, help="default: the animator file itself")
    ap.add_argument("--remove", action="store_true", help="write the file without a text adapter")
    return exit_code(lambda: run(ap.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
