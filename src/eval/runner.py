"""Evaluation of a trained animator over many faces x every prompt of its domain.

Per video: CLIP score and top-1 accuracy of the prompt among the domain's prompts (last frame),
frame-0 PSNR against the input face, smoothness (pixel/latent second differences, flicker).
With the embedded domain's attribute oracle: whether the prompt's target attributes move the
right way, how much of the required change is reached and how far identity attributes drift
(``src.embedded.oracle.oracle_scores``). The paper's metrics (``src.eval.paper_metrics``): temporal
MS-SSIM between consecutive frames, shape ACD and face ACD (its network: ``src.eval.paper_scores``).
Per corpus: Frechet distance of CLIP features of last frames vs input faces. The faces: the seeded
faces of the generator, or new faces near its average face (the authors' diverse samples). The entry
point is ``evaluate.py`` at the repository root.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from typing import Mapping, Optional, Sequence

import torch

from src.utils.errors import UserError

FACE_SAMPLINGS = ("seeds", "near_average")


@torch.no_grad()
def evaluate(pipeline, n_faces: int = 200, frames: int = 16, batch: int = 50, decay: str = "linear",
             strength: float = 1.0, oracle=None, concepts: Optional[Sequence[str]] = None,
             face_seed_offset: int = 10_000, progress: bool = True, motion_total: Optional[str] = None,
             identity_projection: Optional[float] = None, face_sampling: str = "seeds", face_net=None,
             face_net_name: str = "n/a (no face recogniser given)", paper_metrics: bool = True,
             phrasings: Optional[Mapping[str, Sequence[str]]] = None, text_adapter: Optional[bool] = None) -> dict:
    """Animate ``n_faces`` faces with every concept's prompt: face_sampling 'seeds' takes the faces
    of seeds face_seed_offset + i, 'near_average' new faces near the average face
    (``FaceAnimator.sample_near_average`` with seed face_seed_offset).

    pipeline: a :class:`~src.pipeline.FaceAnimator`; oracle: the embedded domain's attribute oracle
    (adds right-way, reach and identity-drift scores); face_net, face_net_name: the network of the
    face ACD and its name (see ``src.eval.paper_scores.face_network``); paper_metrics False skips
    MS-SSIM and both ACDs (computed on the CPU in float64, the slowest part on a GPU). motion_total,
    identity_projection, text_adapter: see ``FaceAnimator.animate`` (default: the file's setting). phrasings:
    {concept: [sentence, ...]} to animate each concept with (``src.eval.phrasings``; faces take them
    in turn), default the domain's template; CLIP's top-1 and score always read the template prompt.
    Returns {summary, per_concept, settings}; with the oracle, per_concept rows also hold
    ``oracle_by_phrasing`` {sentence: {right_way, reach, videos}}."""
    from tqdm import tqdm

    from src.embedded import PARAM_SPACE
    from src.embedded.oracle import oracle_scores
    from src.eval.metrics import ClipFrechetDistance, video_metrics
    from src.eval.paper_scores import paper_video_sums

    if face_sampling not in FACE_SAMPLINGS:
        raise UserError(f"face_sampling '{face_sampling}' is not one of {', '.join(FACE_SAMPLINGS)}")
    near_average = pipeline.sample_near_average(n_faces, seed=face_seed_offset) \
        if face_sampling == "near_average" else None

    motion_total = pipeline.resolve_motion_total(motion_total)
    if identity_projection is None:
        identity_projection = float(pipeline.inference_cfg.identity_projection or 0.0)
    if text_adapter is None:
        text_adapter = pipeline.text_adapter is not None
    domain = pipeline.config["domain"]
    template = domain["prompts"]["template"]
    concepts = list(concepts or domain["prompts"]["concepts"])
    if not concepts:
        raise UserError("the domain has no prompt concepts to evaluate")
    prompt_list = [template.format(c) for c in concepts]
    device = pipeline.device
    fd = ClipFrechetDistance(pipeline.clip).to(device)
    per_concept: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = defaultdict(float)
    count = 0
    jacobians: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per face batch: it does not depend on the prompt
    bar = tqdm(total=len(concepts) * n_faces, unit="video", disable=not progress, file=sys.stderr)
    for concept, prompt in zip(concepts, prompt_list):
        sentences = list(phrasings[concept]) if phrasings else [prompt]
        by_phrasing = torch.zeros(len(sentences), 3)  # right way, reach, valid videos
        sums: dict[str, float] = defaultdict(float)
        oracle_sums: dict[str, float] = defaultdict(float)
        drift_by_attribute = torch.zeros(len(PARAM_SPACE.identity_names))
        observable_count = torch.zeros(len(PARAM_SPACE.identity_names))
        valid_total = 0.0
        for start in range(0, n_faces, batch):
            seeds = list(range(face_seed_offset + start, face_seed_offset + min(n_faces, start + batch)))
            w = near_average[start:start + len(seeds)] if near_average is not None else \
                pipeline.sample_latents(seeds=seeds)
            image = pipeline.render_image(w).clamp(-1, 1)
            if identity_projection > 0 and start not in jacobians:
                jacobians[start] = pipeline.identity_jacobian(w)
            which = [(start + j) % len(sentences) for j in range(len(seeds))]
            out = pipeline.animate(w, [sentences[k] for k in which], num_frames=frames, decay=decay, strength=strength,
                                 image=image, seed=start, motion_total=motion_total,
                                 identity_projection=identity_projection, identity_jacobian=jacobians.get(start),
                                 text_adapter=text_adapter)
            video = out["frames"]
            m = video_metrics(video, ws=out["ws"], image=image, clip=pipeline.clip, prompts=[prompt] * len(seeds),
                              prompt_list=prompt_list)
            for k, v in m.items():
                sums[k] += v * len(seeds)
            if paper_metrics:
                for k, v in paper_video_sums(video, face_net).items():
                    sums[k] += v
            fd.update(image, real=True)
            fd.update(video[:, -1].clamp(-1, 1), real=False)
            if oracle is not None:
                s = oracle_scores(oracle, video, concept)
                valid = s["valid"]
                valid_total += valid.sum().item()
                for k in ("reach", "right_way"):
                    oracle_sums[k] += (s[k] * valid).sum().item()
                idx = torch.tensor(which)
                for col, k in enumerate(("right_way", "reach")):
                    by_phrasing[:, col].index_add_(0, idx, (s[k] * valid).float().cpu())
                by_phrasing[:, 2].index_add_(0, idx, valid.float().cpu())
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
        if phrasings:
            row["phrasings"] = len(sentences)
        per_concept[concept] = row
        for k, v in row.items():
            totals[k] += v
        if oracle is not None and phrasings:  # per sentence (a dict, kept out of the scalar sums)
            row["oracle_by_phrasing"] = {
                text: {"right_way": rw / max(n, 1.0), "reach": r / max(n, 1.0), "videos": n}
                for text, (rw, r, n) in zip(sentences, by_phrasing.tolist())}
        if oracle is not None:  # which identity attributes move (a dict, kept out of the scalar sums)
            row["oracle_identity_drift_by_attribute"] = dict(zip(
                PARAM_SPACE.identity_names, (drift_by_attribute / observable_count.clamp_min(1)).tolist()))
        count += 1
    bar.close()
    summary = {k: v / count for k, v in totals.items() if k not in ("oracle_valid_videos", "phrasings")}
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
                         "identity_projection": identity_projection, "text_adapter": bool(text_adapter),
                         "projection_reader": pipeline.inference_cfg.projection_reader if identity_projection else None,
                         "concepts": concepts, "face_seed_offset": face_seed_offset, "face_sampling": face_sampling,
                         "paper_metrics": paper_metrics,
                         "phrasings": {c: list(v) for c, v in phrasings.items()} if phrasings else "template",
                         "face_acd_network": face_net.name if face_net is not None else face_net_name}}


#: the columns of the printed summary: (result key, header, format)
TABLE_COLUMNS = (("text_top1", "top-1", "{:.3f}"), ("clip_score", "CLIP", "{:.3f}"),
                 ("oracle_right_way", "right way", "{:.3f}"), ("oracle_reach", "reach", "{:.3f}"),
                 ("oracle_identity_drift", "id drift", "{:.4f}"), ("frame0_psnr", "frame-0 dB", "{:.1f}"),
                 ("pixel_jerk", "jerk", "{:.4f}"), ("ms_ssim", "MS-SSIM", "{:.4f}"),
                 ("shape_acd", "shape ACD", "{:.3f}"), ("face_acd", "face ACD", "{:.4f}"))


def summary_table(result: dict) -> str:
    """A fixed-width table of the per-concept and overall figures of :func:`evaluate`'s result (the
    columns the result has; the full set of metrics stays in the JSON), and below it, indented, the
    network that gave the face ACD (or why there is none)."""
    rows = [(name, row) for name, row in result["per_concept"].items()] + [("overall", result["summary"])]
    cols = [c for c in TABLE_COLUMNS if any(isinstance(r.get(c[0]), (int, float)) for _, r in rows)]
    width = max(len("concept"), *(len(name) for name, _ in rows))
    lines = ["  ".join(["concept".ljust(width)] + [h.rjust(max(len(h), 7)) for _, h, _ in cols])]
    for i, (name, row) in enumerate(rows):
        if i == len(rows) - 1:
            lines.append("-" * len(lines[0]))
        cells = [(fmt.format(row[k]) if isinstance(row.get(k), (int, float)) else "-").rjust(max(len(h), 7))
                 for k, h, fmt in cols]
        lines.append("  ".join([name.ljust(width)] + cells))
    network = result.get("settings", {}).get("face_acd_network")
    if network:
        lines.append(f"  face ACD: {network}")
    return "\n".join(lines)


def phrasing_table(result: dict) -> str:
    """Right way and reach per sentence (rows of ``oracle_by_phrasing``), worst right-way first;
    empty when the evaluation had no per-phrasing figures."""
    rows = [(concept, text, v) for concept, row in result["per_concept"].items()
            for text, v in (row.get("oracle_by_phrasing") or {}).items()]
    if not rows:
        return ""
    rows.sort(key=lambda r: (r[2]["right_way"], r[2]["reach"]))
    width = max(len("phrasing"), *(len(t) for _, t, _ in rows))
    cwidth = max(len("concept"), *(len(c) for c, _, _ in rows))
    lines = [f"{'phrasing'.ljust(width)}  {'concept'.ljust(cwidth)}  right way    reach  videos"]
    for concept, text, v in rows:
        lines.append(f"{text.ljust(width)}  {concept.ljust(cwidth)}  {v['right_way']:9.3f}  {v['reach']:7.3f}  "
                     f"{int(v['videos']):6d}")
    return "\n".join(lines)
