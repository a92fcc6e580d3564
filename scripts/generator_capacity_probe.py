"""Can the frozen generator express each concept without changing identity? A CLIP-free capacity probe.

    python scripts/generator_capacity_probe.py --fit-faces 2000 --faces 30 --out capacity.json   # ~35 min on 2 CPU cores; --device cuda

1. Render --fit-faces faces (seeds 100000+i, apart from the evaluation seeds 10000+i), one w [w_dim]
   per face (the mapping broadcasts it to all ws), and read them with the attribute oracle.
2. Ridge-regress the oracle readings (unit-normalised, [P]) on centred w: A [P, w_dim]. The ridge
   strength is picked on the last 20 % of the fit faces, whose R^2 is reported, then A is refitted on all.
3. Per concept and test face (seeds 10000+i): the required change r of the preset's target
   attributes T, as src.embedded.oracle.oracle_scores defines it. 'constrained': the minimum-norm
   delta with A_T delta = r_T and A_I delta = 0 (I: identity attributes), InterFaceGAN's conditional
   projection done as one least-squares system; 'unconstrained': only A_T delta = r_T. A 16-frame
   video w_t = w + t/15 delta is rendered and scored by oracle_scores (reach, right way, drift).

Linear directions are one family of edits: a poor fit (low R^2) makes the result a lower bound on
what the generator can express.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.embedded import PARAM_SPACE  # noqa: E402
from src.embedded.vocabulary import apply_preset, get  # noqa: E402
from src.embedded.oracle import oracle_scores  # noqa: E402
from src.stylegan import seeded_ws  # noqa: E402
from src.utils.errors import UserError, exit_code  # noqa: E402

FIT_SEED, TEST_SEED = 100_000, 10_000
RIDGE_GRID = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4)  # last-20 % R² picks one
VARIANTS = ("constrained", "unconstrained")
METRICS = ("reach", "right_way", "identity_drift", "identity_drift_raw", "delta_norm")


def sample_w(G, seeds: list[int], psi: float) -> torch.Tensor:
    """One w per seed [N, w_dim], the faces AnimatorModule.sample_latents gives for these seeds."""
    return seeded_ws(G, seeds, psi)[:, 0]  # without style mixing all num_ws rows are equal


def render(G, w: torch.Tensor, noise_mode: str) -> torch.Tensor:
    """w [N, w_dim] -> images [N, 3, H, W] in [-1, 1] (clamped, as the animator's frames)."""
    return G.synthesis(w.unsqueeze(1).expand(-1, G.num_ws, -1), noise_mode=noise_mode).clamp(-1, 1)


def read_faces(G, oracle, seeds: list[int], psi: float, noise_mode: str, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(w [N, w_dim], oracle readings [N, P]) of the faces of ``seeds``."""
    ws, reads = [], []
    for i in range(0, len(seeds), batch):
        w = sample_w(G, seeds[i:i + batch], psi)
        ws.append(w)
        reads.append(oracle(render(G, w, noise_mode)).float())
    return torch.cat(ws), torch.cat(reads)


def ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [N, C], y [N, P] -> (x mean [C], y mean [P], A [P, C]) with y ~ y_mean + (x - x_mean) A^T."""
    xm, ym = x.mean(0), y.mean(0)
    xc = (x - xm).double()
    gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64, device=x.device)
    a = torch.linalg.solve(gram, xc.T @ (y - ym).double()).T
    return xm, ym, a.float()


def r2(x: torch.Tensor, y: torch.Tensor, fit: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-attribute R^2 [P] of a ridge fit on (x [N, C], y [N, P])."""
    xm, ym, a = fit
    pred = ym + (x - xm) @ a.T
    return 1 - (y - pred).pow(2).sum(0) / (y - y.mean(0)).pow(2).sum(0).clamp_min(1e-12)


def fit_attributes(w: torch.Tensor, reads: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Pick the ridge strength on a held-out 20 %, refit on all faces -> (A [P, w_dim], fit report)."""
    n_train = int(0.8 * len(w))
    scores = {lam: r2(w[n_train:], reads[n_train:], ridge(w[:n_train], reads[:n_train], lam)) for lam in RIDGE_GRID}
    lam = max(scores, key=lambda k: scores[k].mean().item())
    held = scores[lam]
    expr = PARAM_SPACE.mask("expression")
    report = {"ridge": lam, "heldout_faces": len(w) - n_train,
              "r2_expression_mean": held[expr].mean().item(), "r2_identity_mean": held[~expr].mean().item(),
              "r2_by_attribute": dict(zip(PARAM_SPACE.names, held.tolist())),
              # the scale of |delta|: how far apart typical faces are in W
              "w_spread": (w - w.mean(0)).norm(dim=1).mean().item()}
    return ridge(w, reads, lam)[2], report


def required_change(first: torch.Tensor, concept: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(preset mask T [P] bool, required change [N, P]) from frame-0 readings [N, P], exactly as
    oracle_scores defines it (zero outside T)."""
    start_nat = PARAM_SPACE.clamp(PARAM_SPACE.denormalize(first))
    required = PARAM_SPACE.normalize(apply_preset(start_nat, concept, 1.0)) - first
    target = torch.zeros(len(PARAM_SPACE), dtype=torch.bool, device=first.device)
    for name in get(concept).preset:
        target[PARAM_SPACE.idx(name)] = True
    return target, torch.where(target, required, torch.zeros_like(required))


def directions(a: torch.Tensor, target: torch.Tensor, required: torch.Tensor) -> dict[str, torch.Tensor]:
    """Minimum-norm W edits [N, w_dim] per variant: A_T delta = r_T ('unconstrained'), plus
    A_I delta = 0 ('constrained'). a [P, w_dim], target [P] bool, required [N, P]."""
    identity = PARAM_SPACE.mask("identity", device=a.device)
    r_t = required[:, target].T.double()  # [|T|, N]
    out = {}
    for variant, rows in (("constrained", target | identity), ("unconstrained", target)):
        m = a[rows].double()  # rows keep PARAM_SPACE order, so T's rows of rhs are placed by target[rows]
        rhs = torch.zeros(m.shape[0], r_t.shape[1], dtype=torch.float64, device=a.device)
        rhs[target[rows]] = r_t
        out[variant] = (torch.linalg.pinv(m) @ rhs).T.float()  # exact when m has full row rank (|rows| <= w_dim)
    return out


def score_concept(G, oracle, w: torch.Tensor, first_img: torch.Tensor, first_read: torch.Tensor, a: torch.Tensor,
                  concept: str, frames: int, noise_mode: str, batch: int) -> dict[str, dict[str, float]]:
    """Render and score both variants' videos of one concept -> {variant: {metric: mean}}, aggregated
    as the evaluation (reach and right way over valid videos, drift over all)."""
    target, required = required_change(first_read, concept)
    t = torch.arange(1, frames, device=w.device).float().div(frames - 1).view(1, -1, 1)  # frame 0 is the input
    rows = {}
    for variant, delta in directions(a, target, required).items():
        sums = dict.fromkeys(("reach", "right_way", "identity_drift", "identity_drift_raw", "valid"), 0.0)
        per_call = max(1, batch // (frames - 1))  # faces per generator call
        for i in range(0, len(w), per_call):
            wb, db = w[i:i + per_call], delta[i:i + per_call]
            moved = (wb.unsqueeze(1) + t * db.unsqueeze(1)).reshape(-1, w.shape[1])
            video = render(G, moved, noise_mode).reshape(len(wb), frames - 1, *first_img.shape[1:])
            s = oracle_scores(oracle, torch.cat([first_img[i:i + per_call].unsqueeze(1), video], 1), concept)
            for k in ("reach", "right_way"):
                sums[k] += (s[k] * s["valid"]).sum().item()
            for k in ("identity_drift", "identity_drift_raw", "valid"):
                sums[k] += s[k].sum().item()
        valid = max(sums["valid"], 1.0)
        rows[variant] = {"reach": sums["reach"] / valid, "right_way": sums["right_way"] / valid,
                         "identity_drift": sums["identity_drift"] / len(w),
                         "identity_drift_raw": sums["identity_drift_raw"] / len(w),
                         "delta_norm": delta.norm(dim=1).mean().item(), "valid_videos": sums["valid"]}
    return rows


def print_table(per_concept: dict, means: dict) -> None:
    """One row per concept, then the means; R²(T): held-out R² of the ridge fit on the concept's targets."""
    head = "reach  right  drift  raw    |δ|"
    print(f"{'concept':<18} {'R²(T)':>5} | constrained: {head} | unconstrained: {head}")
    for concept, row in list(per_concept.items()) + [("MEAN", means)]:
        cells = ["  ".join(f"{row[v][k]:5.2f}" for k in METRICS) for v in VARIANTS]
        print(f"{concept:<18} {row['r2_target']:5.2f} | {'':13}{cells[0]} | {'':15}{cells[1]}")


def run(args: argparse.Namespace) -> None:
    from omegaconf import OmegaConf

    from src.embedded.oracle import load_oracle
    from src.stylegan import load_generator

    if args.fit_faces < 50 or args.faces < 1 or args.frames < 2 or args.batch < 1:
        raise UserError("--fit-faces must be >= 50, --faces and --batch >= 1, --frames >= 2")
    domain = OmegaConf.load(args.domain)
    psi, noise_mode = float(domain.generator.truncation_psi), str(domain.generator.noise_mode)
    concepts = list(args.concepts or domain.prompts.concepts)
    G = load_generator(args.generator, device=args.device).eval()
    oracle = load_oracle(args.oracle, device=args.device).eval()
    start = time.time()
    with torch.no_grad():
        w_fit, reads_fit = read_faces(G, oracle, list(range(FIT_SEED, FIT_SEED + args.fit_faces)), psi,
                                      noise_mode, args.batch)
        a, fit = fit_attributes(w_fit, reads_fit)
        fit["seconds"] = time.time() - start
        print(f"fit: {args.fit_faces} faces in {fit['seconds']:.0f} s, ridge {fit['ridge']:g}, held-out R² "
              f"expression {fit['r2_expression_mean']:.3f}, identity {fit['r2_identity_mean']:.3f}, "
              f"mean |w - mean w| {fit['w_spread']:.2f}", file=sys.stderr)
        w = sample_w(G, list(range(TEST_SEED, TEST_SEED + args.faces)), psi)
        first_img = torch.cat([render(G, w[i:i + args.batch], noise_mode) for i in range(0, len(w), args.batch)])
        first_read = torch.cat([oracle(first_img[i:i + args.batch]).float() for i in range(0, len(w), args.batch)])
        per_concept = {}
        for concept in concepts:
            t0 = time.time()
            per_concept[concept] = score_concept(G, oracle, w, first_img, first_read, a, concept, args.frames,
                                                 noise_mode, args.batch)
            per_concept[concept]["r2_target"] = sum(fit["r2_by_attribute"][n] for n in get(concept).preset) \
                / len(get(concept).preset)
            print(f"{concept}: {time.time() - t0:.0f} s", file=sys.stderr)
    means = {v: {k: sum(r[v][k] for r in per_concept.values()) / len(per_concept) for k in METRICS}
             for v in VARIANTS}
    means["r2_target"] = sum(r["r2_target"] for r in per_concept.values()) / len(per_concept)
    print_table(per_concept, means)
    print(f"held-out R² (last 20 % of fit faces): expression {fit['r2_expression_mean']:.3f}, identity "
          f"{fit['r2_identity_mean']:.3f}; mean |w - mean w| {fit['w_spread']:.2f}; "
          f"total {time.time() - start:.0f} s")
    if args.out:
        result = {"settings": {**vars(args), "psi": psi, "noise_mode": noise_mode, "concepts": concepts,
                               "fit_seed": FIT_SEED, "test_seed": TEST_SEED},
                  "fit": fit, "per_concept": per_concept, "summary": means, "seconds": time.time() - start}
        from src.utils.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default=str(ROOT / "assets/stylegan2_synthetic128.safetensors"))
    ap.add_argument("--oracle", default=str(ROOT / "assets/oracle_synthetic.safetensors"))
    ap.add_argument("--domain", default=str(ROOT / "conf/domain/synthetic.yaml"),
                    help="gives truncation psi, noise mode and the concepts")
    ap.add_argument("--fit-faces", type=int, default=2000, help="faces for the ridge fit (~0.1 s each on 2 CPU cores)")
    ap.add_argument("--faces", type=int, default=30, help="test faces per concept")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=64, help="images per generator call")
    ap.add_argument("--concepts", nargs="*", default=None, help="default: the domain's prompt concepts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
