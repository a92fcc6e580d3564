"""Evaluate a trained animator over many faces x every prompt of its domain; prints JSON.

    python -m src.eval.evaluate assets/animator_synthetic.safetensors --faces 200 --frames 16 \
        --oracle assets/oracle_synthetic.safetensors --device cuda --out results.json

Per video: CLIP score and top-1 accuracy of the prompt among the domain's prompts (last frame),
frame-0 PSNR against the input face, smoothness (pixel/latent second differences, flicker).
With the synthetic domain's attribute oracle: whether the prompt's target attributes move the
right way (projection of the change onto the preset's required change > 0), how much of the
required change is reached (that projection as a fraction), and how far identity attributes drift
(max over frames of |a_t - a_0|, in units of each attribute's range; a discrete attribute counts 1
when its class changes, else 0). Per corpus: Frechet distance
of CLIP features of last frames vs input faces.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

import torch

from src.utils.errors import UserError


def oracle_scores(oracle, frames: torch.Tensor, concept: str) -> dict[str, torch.Tensor]:
    """Per-video oracle scores. frames [N,T,3,H,W]; returns tensors [N], and
    identity_drift_by_attribute / identity_observable [N, identity attributes] (PARAM_SPACE.identity_names).

    Identity drift skips what the input face cannot show (observable_mask of frame 0: the frame
    colour of absent glasses), where the oracle's reading is untrained noise."""
    from src.data.synthetic import PARAM_SPACE, observable_mask
    from src.data.synthetic.vocabulary import apply_preset, get

    n, t = frames.shape[:2]
    all_unit = oracle(frames.reshape(n * t, *frames.shape[2:])).float().reshape(n, t, -1)  # one pass
    first, last = all_unit[:, 0], all_unit[:, -1]
    start_nat = PARAM_SPACE.clamp(PARAM_SPACE.denormalize(first))
    target_unit = PARAM_SPACE.normalize(apply_preset(start_nat, concept, 1.0))
    required = target_unit - first                             # [N,P], only preset params are non-zero
    preset = torch.zeros(required.shape[1], dtype=torch.bool, device=required.device)
    for name in get(concept).preset:
        preset[PARAM_SPACE.idx(name)] = True
    required = torch.where(preset, required, torch.zeros_like(required))
    change = last - first
    norm2 = required.pow(2).sum(1)
    reach = (change * required).sum(1) / norm2.clamp_min(1e-8)  # fraction of the required change
    identity = PARAM_SPACE.mask("identity", device=all_unit.device)
    # discrete attributes (glasses on/off, hair style) change only when their class changes: the
    # oracle regresses class indices, and a reading between two classes is uncertainty, not a change
    # (a class flip counts as the whole range, as a continuous attribute moved end to end)
    read = PARAM_SPACE.normalize(PARAM_SPACE.clamp(PARAM_SPACE.denormalize(all_unit)))
    discrete = torch.tensor([s.discrete for s in PARAM_SPACE.specs], device=all_unit.device)
    read = torch.where(discrete, read, all_unit)
    seen = observable_mask(first.clamp(0, 1))[:, identity]

    def max_change(step: torch.Tensor) -> torch.Tensor:  # [N,T,P] -> [N, identity params], 0 where unseen
        return torch.where(seen, step.amax(dim=1)[:, identity], 0.0)

    step = (read - read[:, :1]).abs()
    drift = max_change(torch.where(discrete & (step > 0), torch.ones_like(step), step))
    # the raw readings, discrete ones too (the definition before session 5, for comparison)
    raw = max_change((all_unit - all_unit[:, :1]).abs())
    valid = norm2 > 0.05 ** 2  # faces already at the target have nothing to show
    return {"reach": reach, "right_way": (reach > 0).float(), "valid": valid.float(),
            "identity_drift": drift.sum(1) / seen.sum(1).clamp_min(1), "identity_drift_max": drift.amax(1),
            "identity_drift_raw": raw.sum(1) / seen.sum(1).clamp_min(1),
            "identity_drift_by_attribute": drift, "identity_observable": seen.float()}


@torch.no_grad()
def evaluate(module, n_faces: int = 200, frames: int = 16, batch: int = 50, decay: str = "linear",
             strength: float = 1.0, oracle=None, concepts: Optional[Sequence[str]] = None,
             face_seed_offset: int = 10_000, progress: bool = True, motion_total: Optional[str] = None,
             identity_projection: Optional[float] = None) -> dict:
    """Animate ``n_faces`` faces (seeds face_seed_offset + i) with every concept's prompt.
    motion_total, identity_projection: see AnimatorModule.animate (default: the checkpoint's setting)."""
    from tqdm import tqdm

    from src.data.synthetic import PARAM_SPACE
    from src.eval.metrics import ClipFrechetDistance, video_metrics

    motion_total = module.resolve_motion_total(motion_total)
    if identity_projection is None:
        identity_projection = float(module.hparams.get("identity_projection", 0.0))
    domain = module.hparams["domain"]
    template = domain["prompts"]["template"]
    concepts = list(concepts or domain["prompts"]["concepts"])
    if not concepts:
        raise UserError("the domain has no prompt concepts to evaluate")
    prompt_list = [template.format(c) for c in concepts]
    device = next(module.animator.parameters()).device
    fd = ClipFrechetDistance(module.clip).to(device)
    per_concept: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = defaultdict(float)
    count = 0
    jacobians: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per face batch: it does not depend on the prompt
    bar = tqdm(total=len(concepts) * n_faces, unit="video", disable=not progress, file=sys.stderr)
    for concept, prompt in zip(concepts, prompt_list):
        sums: dict[str, float] = defaultdict(float)
        oracle_sums: dict[str, float] = defaultdict(float)
        drift_by_attribute = torch.zeros(len(PARAM_SPACE.identity_names))
        observable_count = torch.zeros(len(PARAM_SPACE.identity_names))
        valid_total = 0.0
        for start in range(0, n_faces, batch):
            seeds = list(range(face_seed_offset + start, face_seed_offset + min(n_faces, start + batch)))
            w = module.sample_latents(seeds=seeds)
            image = module.render_image(w).clamp(-1, 1)
            if identity_projection > 0 and start not in jacobians:
                jacobians[start] = module.identity_jacobian(w)
            out = module.animate(w, [prompt] * len(seeds), num_frames=frames, decay=decay, strength=strength,
                                 image=image, seed=start, motion_total=motion_total,
                                 identity_projection=identity_projection, identity_jacobian=jacobians.get(start))
            video = out["frames"]
            m = video_metrics(video, ws=out["ws"], image=image, clip=module.clip, prompts=[prompt] * len(seeds),
                              prompt_list=prompt_list)
            for k, v in m.items():
                sums[k] += v * len(seeds)
            fd.update(image, real=True)
            fd.update(video[:, -1].clamp(-1, 1), real=False)
            if oracle is not None:
                s = oracle_scores(oracle, video, concept)
                valid = s["valid"]
                valid_total += valid.sum().item()
                for k in ("reach", "right_way"):
                    oracle_sums[k] += (s[k] * valid).sum().item()
                for k in ("identity_drift", "identity_drift_max", "identity_drift_raw"):
                    oracle_sums[k] += s[k].sum().item()
                drift_by_attribute += s["identity_drift_by_attribute"].sum(0).cpu()
                observable_count += s["identity_observable"].sum(0).cpu()
            bar.update(len(seeds))
        row = {k: v / n_faces for k, v in sums.items()}
        if oracle is not None:
            row["oracle_reach"] = oracle_sums["reach"] / max(valid_total, 1.0)
            row["oracle_right_way"] = oracle_sums["right_way"] / max(valid_total, 1.0)
            row["oracle_valid_videos"] = valid_total
            row["oracle_identity_drift"] = oracle_sums["identity_drift"] / n_faces
            row["oracle_identity_drift_max"] = oracle_sums["identity_drift_max"] / n_faces
            row["oracle_identity_drift_raw"] = oracle_sums["identity_drift_raw"] / n_faces
        per_concept[concept] = row
        for k, v in row.items():
            totals[k] += v
        if oracle is not None:  # which identity attributes move (a dict, kept out of the scalar sums)
            row["oracle_identity_drift_by_attribute"] = dict(zip(
                PARAM_SPACE.identity_names, (drift_by_attribute / observable_count.clamp_min(1)).tolist()))
        count += 1
    bar.close()
    summary = {k: v / count for k, v in totals.items() if k != "oracle_valid_videos"}
    if oracle is not None:
        summary["oracle_identity_drift_by_attribute"] = {
            name: sum(r["oracle_identity_drift_by_attribute"][name] for r in per_concept.values()) / count
            for name in PARAM_SPACE.identity_names}
    try:
        summary.update(fd.compute())
    except RuntimeError as e:  # too few faces for a covariance: report, do not fail the evaluation
        summary["clip_fd_error"] = str(e)
    return {"summary": summary, "per_concept": per_concept,
            "settings": {"faces": n_faces, "frames": frames, "decay": decay, "strength": strength, "motion_total": motion_total,
                         "identity_projection": identity_projection,
                         "projection_reader": module.hparams.get("projection_reader") if identity_projection else None,
                         "concepts": concepts, "face_seed_offset": face_seed_offset}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="animator .safetensors export or Lightning .ckpt")
    ap.add_argument("--faces", type=int, default=200)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--decay", default="linear")
    ap.add_argument("--strength", type=float, default=1.0)
    ap.add_argument("--motion-total", choices=("train", "paper"), default=None,
                    help="train: a video moves as far as a training video; paper: the authors' step sizes "
                         "(default: the checkpoint's setting)")
    ap.add_argument("--identity-projection", type=float, default=None,
                    help="0..1 of the identity projection (default: the checkpoint's setting; needs a projection "
                         "reader: --projection-reader or the checkpoint's)")
    ap.add_argument("--projection-reader", default=None, help="identity-attribute reader of the projection")
    ap.add_argument("--oracle", default=None, help="synthetic-domain attribute oracle (.safetensors)")
    ap.add_argument("--concepts", nargs="*", default=None, help="default: the domain's prompt concepts")
    ap.add_argument("--face-seed-offset", type=int, default=10_000,
                    help="faces are the latents of seeds OFFSET..OFFSET+faces-1 (another offset: other test faces, "
                         "e.g. to confirm a setting chosen on the default ones)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    args = ap.parse_args(argv)
    from src.utils.cpu_memory import reuse_freed_memory

    reuse_freed_memory()
    try:
        from src.systems.animator import load_animator
        from src.utils.io import atomic_write_text

        if args.faces < 1 or args.frames < 2 or args.batch < 1:
            raise UserError("--faces and --batch must be >= 1 and --frames >= 2")
        if args.face_seed_offset < 0:
            raise UserError("--face-seed-offset must be >= 0")
        if args.identity_projection is not None and not 0 <= args.identity_projection <= 1:
            raise UserError("--identity-projection must be in [0, 1]")
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("--device cuda but CUDA is not available")
        overrides = {"projection_reader": args.projection_reader} if args.projection_reader else None
        module = load_animator(args.checkpoint, device=args.device, map_overrides=overrides)
        oracle = None
        if args.oracle:
            from src.networks.oracle import load_oracle

            oracle = load_oracle(args.oracle, device=args.device).eval()
        result = evaluate(module, args.faces, args.frames, args.batch, args.decay, args.strength, oracle, args.concepts,
                          face_seed_offset=args.face_seed_offset, motion_total=args.motion_total,
                          identity_projection=args.identity_projection)
        text = json.dumps(result, indent=2)
        if args.out:
            atomic_write_text(args.out, text)
        print(text)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
