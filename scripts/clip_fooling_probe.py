"""Does the CLIP loss move the face, or fool the CLIP? Optimise one W+ offset per face against the
contrastive CLIP loss and read the result with the attribute oracle.

    python scripts/clip_fooling_probe.py [--clip C.safetensors] [--views 0] [--steps 60]

For each of six prompts (one face each), prints CLIP top-1 over the six prompts and the signed
change of the prompt's main attribute as the oracle reads it (positive = the right way). A CLIP
that is fooled reaches top-1 1.0 while the attribute stays put or moves the wrong way.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.utils.errors import exit_code  # noqa: E402

PROBES = [("turning head right", "yaw", 1), ("turning head left", "yaw", -1), ("smiling", "smile", 1),
          ("opening mouth", "mouth_open", 1), ("tilting head", "roll", 1), ("looking right", "gaze_x", 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--animator", default="assets/animator_synthetic.safetensors", help="gives G and the default CLIP")
    ap.add_argument("--clip", default=None, help="another SmallClip to probe (default: the animator's)")
    ap.add_argument("--oracle", default="assets/oracle_synthetic.safetensors")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--latent-weight", type=float, default=1.0)
    ap.add_argument("--views", type=int, default=0, help="augmented views in the loss (as model.train.clip_views)")
    ap.add_argument("--seed", type=int, default=20000)
    args = ap.parse_args(argv)
    from src.data.augment import augmented_views, label_preserving_pipe
    from src.embedded import PARAM_SPACE
    from src.losses.animator import contrastive_clip_loss
    from src.embedded.oracle import load_oracle
    from src.networks.small_clip import load_small_clip
    from src.pipeline import FaceAnimator

    module = oracle = clip = None

    def load() -> None:
        nonlocal module, oracle, clip
        module = FaceAnimator.from_pretrained(args.animator)
        oracle = load_oracle(args.oracle)
        clip = load_small_clip(args.clip) if args.clip else module.clip

    status = exit_code(load)
    if status:
        return status
    torch.manual_seed(0)
    n = len(PROBES)
    with torch.no_grad():
        txt = clip.encode_text([f"The person is {c}." for c, _, _ in PROBES]).float()
    w0 = module.sample_latents(seeds=list(range(args.seed, args.seed + n)))
    render = lambda w: module.synthesize(w[:, None])[:, 0]  # noqa: E731  [N,L,C] -> [N,3,H,W]
    idx = [PARAM_SPACE.idx(a) for _, a, _ in PROBES]
    with torch.no_grad():
        a0 = PARAM_SPACE.denormalize(oracle(render(w0)).float())
    pipe = label_preserving_pipe(p=1.0)
    delta = torch.zeros_like(w0, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=args.lr)
    print(f"| step | loss | top-1 | " + " | ".join(c for c, _, _ in PROBES) + " |")
    print("|" + "---|" * (3 + n))
    for step in range(args.steps + 1):
        img = render(w0 + delta)
        views = augmented_views(img, pipe, args.views, 0.03 if args.views else 0.0)
        emb = clip.encode_image(views).float().view(1 + args.views, n, -1)
        loss = torch.stack([contrastive_clip_loss(emb[v], txt, 0.07) for v in range(1 + args.views)]).mean()
        if step % 20 == 0:
            with torch.no_grad():
                a1 = PARAM_SPACE.denormalize(oracle(img).float())
                top1 = ((F.normalize(emb[0], dim=-1) @ F.normalize(txt, dim=-1).t()).argmax(1) == torch.arange(n)).float().mean()
            moves = [s * float(a1[i, j] - a0[i, j]) for i, ((_, _, s), j) in enumerate(zip(PROBES, idx))]
            print(f"| {step} | {float(loss.detach()):.3f} | {float(top1):.2f} | " + " | ".join(f"{m:+.2f}" for m in moves) + " |",
                  flush=True)
        if step == args.steps:
            break
        opt.zero_grad()
        (loss + args.latent_weight * delta.pow(2).mean()).backward()
        opt.step()
    return 0


if __name__ == "__main__":
    sys.exit(main())
