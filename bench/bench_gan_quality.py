"""Quality of an embedded generator against the renderer it imitates, read by the attribute oracle.

    python bench/bench_gan_quality.py                                   # shipped G, 1,024 samples each, CPU
    python bench/bench_gan_quality.py --generator G.safetensors --device cuda --samples 4096 --json q.json
    python bench/bench_gan_quality.py --sheet sheet.png --yaw-sweep sweep.png --project 3

G samples (psi 1, constant noise, z seeded ``--seed``) against renders drawn as the GAN's training
stream draws them (parameters seeded ``--seed`` + 1; a second render set, ``--seed`` + 2, gives the
renders-vs-renders floor of both Frechet distances at the same sample count). Prints: per oracle
attribute the 5-95 percentile range over G samples and over renders (natural units) and their ratio
(coverage) and, for expressions and pose, the share of faces read more than a quarter of the range
away from the neutral value (the renderer draws each such attribute "active" for about a quarter of
faces); the Frechet distance of the oracle's outputs (normalised attribute vectors) and of its
mean-pooled conv-trunk features; the Laplacian-variance sharpness ratio G / renders; the pose block
(how often heads are turned or tilted, by the renderer's truth and by the oracle). Metric functions:
``src/embedded/gan_quality.py``.

Optional: ``--sheet`` 64 G samples beside 64 renders; ``--yaw-sweep`` G samples stepped along the W
direction that moves the oracle's yaw most (ridge regression over the samples), the oracle's yaw above
each face; ``--project K`` projects the K most turned renders (and K frontal ones) into G (W+, pixel
loss) and prints the reconstructions' PSNR and oracle yaw; ``--json`` every figure, written atomically.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from src.embedded import gan_quality as gq  # noqa: E402
from src.embedded.params import PARAM_SPACE  # noqa: E402
from src.utils.errors import UserError, exit_code  # noqa: E402

GENERATOR = ROOT / "assets" / "stylegan2_synthetic128.safetensors"
ORACLE = ROOT / "assets" / "oracle_synthetic.safetensors"
TURNED = 0.5  # |yaw| or |roll| above this (natural units, range -1..1) counts as a turned / tilted head


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default=str(GENERATOR), help="generator file (default: the shipped one)")
    ap.add_argument("--oracle", default=str(ORACLE), help="attribute oracle (default: the shipped one)")
    ap.add_argument("--samples", type=int, default=1024, help="G samples, and renders in each render set")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--psi", type=float, default=1.0, help="truncation psi of the G samples")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", help="write every figure here (atomically)")
    ap.add_argument("--sheet", help="PNG: 64 G samples beside 64 renders")
    ap.add_argument("--yaw-sweep", help="PNG: G samples stepped along the W direction of the oracle's yaw")
    ap.add_argument("--project", type=int, default=0, help="project K turned and K frontal renders into G")
    ap.add_argument("--project-steps", type=int, default=150)
    args = ap.parse_args(argv)
    if args.samples < 8:
        raise UserError(f"--samples must be >= 8, got {args.samples}")
    if args.batch < 1 or args.project < 0 or args.project_steps < 1:
        raise UserError("--batch and --project-steps must be >= 1, --project >= 0")
    if not math.isfinite(args.psi):
        raise UserError(f"--psi must be a finite number, got {args.psi}")
    for path, what in ((args.generator, "--generator"), (args.oracle, "--oracle")):
        if not Path(path).is_file():
            raise UserError(f"{what} file not found: {path}")
    try:
        args.device = torch.device(args.device)
    except RuntimeError:
        raise UserError(f"--device: not a device: {args.device}") from None
    if args.device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device here")
    return args


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def read_set(label, batches, reader, n, keep=64):
    t0 = time.perf_counter()

    def progress(done):
        rate = done / max(time.perf_counter() - t0, 1e-9)
        print(f"  {label}: {done}/{n} images, {rate:.1f} img/s", flush=True)

    return gq.read_batches(batches, reader, keep=keep, progress=progress)


def coverage_table(gen, ref):
    """Rows (name, G range, renders range, ratio, share away from neutral in G / renders), natural units,
    and the printed table."""
    g, r, ratio = gq.coverage(gen, ref)
    away_g, away_r = gq.away_share(gen, PARAM_SPACE.normalize(PARAM_SPACE.neutral())), \
        gq.away_share(ref, PARAM_SPACE.normalize(PARAM_SPACE.neutral()))
    lo, hi = PARAM_SPACE.low().double(), PARAM_SPACE.high().double()
    g, r = lo + g * (hi - lo), lo + r * (hi - lo)
    rows = [dict(attribute=n, kind=PARAM_SPACE.specs[i].kind, g_range=[float(g[0, i]), float(g[1, i])],
                 renders_range=[float(r[0, i]), float(r[1, i])], ratio=float(ratio[i]),
                 away_g=float(away_g[i]), away_renders=float(away_r[i])) for i, n in enumerate(PARAM_SPACE.names)]
    lines = [f"  {'attribute':<15} {'G 5..95%':>16} {'renders 5..95%':>16} {'ratio':>6}   "
             f"away from neutral: {'G':>5} {'renders':>7}"]
    for row in rows:
        away = (f"{row['away_g']:>24.1%} {row['away_renders']:>7.1%}" if row["kind"] == "expression" else "")
        lines.append(f"  {row['attribute']:<15} {row['g_range'][0]:>7.3f}..{row['g_range'][1]:<7.3f} "
                     f"{row['renders_range'][0]:>7.3f}..{row['renders_range'][1]:<7.3f} {row['ratio']:>6.2f} {away}")
    return rows, "\n".join(lines)


def pose_block(gs, rs):
    """How often heads are turned / tilted (|value| > TURNED): renderer truth, oracle on renders, oracle on G;
    and how well the oracle reads the truth on renders (correlation, mean absolute error)."""
    out = {}
    nat_g = PARAM_SPACE.denormalize(gs.cat("attributes"))
    nat_r = PARAM_SPACE.denormalize(rs.cat("attributes"))
    truth = rs.cat("latents")
    for name in ("yaw", "roll"):
        i = PARAM_SPACE.idx(name)
        t, o_r, o_g = truth[:, i], nat_r[:, i], nat_g[:, i]
        corr = float(torch.corrcoef(torch.stack([t, o_r]))[0, 1])
        out[name] = dict(turned_truth=float((t.abs() > TURNED).float().mean()),
                         turned_oracle_renders=float((o_r.abs() > TURNED).float().mean()),
                         turned_oracle_g=float((o_g.abs() > TURNED).float().mean()),
                         oracle_vs_truth_corr=corr, oracle_vs_truth_mae=float((t - o_r).abs().mean()),
                         max_abs_oracle_g=float(o_g.abs().max()), std_truth=float(t.std()), std_oracle_renders=float(o_r.std()), std_oracle_g=float(o_g.std()))
    return out


def yaw_direction(gs):
    """(unit direction in W, held-out R^2, the rms distance of W samples to their mean) from the ridge
    regression of the oracle's yaw on W."""
    w, yaw = gs.cat("latents").double(), PARAM_SPACE.denormalize(gs.cat("attributes"))[:, PARAM_SPACE.idx("yaw")]
    d, r2 = gq.regression_direction(w, yaw.double())
    return d.float(), r2, float((w - w.mean(0)).square().sum(1).mean().sqrt())


def save_png(image, path, bits=8):
    """image [H, W, 3] uint8 -> an atomic PNG at ``path``, colours cut to ``bits`` per channel (smaller files)."""
    from PIL import Image

    from src.utils.io import atomic_write
    from src.utils.video import check_image

    with atomic_write(path, verify=lambda tmp: check_image(tmp, (image.shape[1], image.shape[0]))) as tmp:
        Image.fromarray(image & (0xFF << (8 - bits) & 0xFF)).save(tmp, format="PNG", optimize=True)


def stack(sheets, axis):
    """Sheets [H, W, 3] uint8 side by side (axis 1) or one above the other (axis 0), padded with the margin colour."""
    import numpy as np

    from src.utils.contact_sheet import BACKGROUND

    other = 1 - axis
    size = max(s.shape[other] for s in sheets)
    padded = []
    for s in sheets:
        widths = [(0, 0), (0, 0), (0, 0)]
        widths[other] = (0, size - s.shape[other])
        padded.append(np.stack([np.pad(s[..., c], widths[:2], constant_values=BACKGROUND[c]) for c in range(3)], -1))
    return np.concatenate(padded, axis)


def write_sheet(path, gs, rs, frame_size):
    """64 G samples (8 x 8; fewer rows with fewer samples) beside 64 renders, each grid under its title."""
    from src.utils.contact_sheet import render_contact_sheet
    from src.utils.video import to_uint8_frames

    def grid(images, title):
        rows = min(8, len(images) // 8)
        frames = to_uint8_frames(images[:8 * rows])
        return render_contact_sheet(frames.reshape(rows, 8, *frames.shape[1:]), column_labels=[], title=title,
                                    max_frame_size=frame_size).image

    save_png(stack([grid(gs.cat("images"), "generator samples (psi 1)"), grid(rs.cat("images"), "renders")], 1), path,
             bits=6)


def write_yaw_sweep(path, G, reader, w0, direction, spread, frame_size, steps=(-1, -.75, -.5, -.25, 0, .25, .5, .75, 1)):
    """One row per W latent of w0 [F, w_dim], stepped along ``direction`` by ``steps`` times ``spread`` (the
    rms distance of W samples to their mean), the oracle's yaw (natural units) above each face. Returns the
    yaws [F, len(steps)]."""
    from src.utils.contact_sheet import render_contact_sheet
    from src.utils.video import to_uint8_frames

    dev = next(G.parameters()).device
    offsets = torch.tensor(steps, dtype=torch.float32).view(1, -1, 1) * spread * direction.view(1, 1, -1)
    w = (w0.unsqueeze(1) + offsets).reshape(-1, w0.shape[1])
    images = torch.cat([gq.sample_generator(G, w[i:i + 16].to(dev)).cpu() for i in range(0, len(w), 16)])
    yaw = PARAM_SPACE.denormalize(reader(images.to(dev))[0].cpu())[:, PARAM_SPACE.idx("yaw")].reshape(len(w0), -1)
    frames = to_uint8_frames(images)
    frames = frames.reshape(len(w0), len(steps), *frames.shape[1:])
    sheets = []
    for i in range(len(w0)):
        title = (f"G samples stepped along the yaw direction in W by {steps[0]:+g}..{steps[-1]:+g} x the samples' rms "
                 "distance to their mean; the oracle's yaw above each face (renders: -1 turned left .. +1 right)"
                 ) if i == 0 else None
        sheets.append(render_contact_sheet(frames[i:i + 1], column_labels=[f"{float(y):+.2f}" for y in yaw[i]],
                                           title=title, max_frame_size=frame_size).image)
    save_png(stack(sheets, 0), path)
    return yaw


def project_renders(G, reader, rs, k, steps):
    """Project the k renders with the largest |true yaw| and the k with the smallest into G (W+, pixels)."""
    from src.inversion.projection import project

    dev = next(G.parameters()).device
    images, truth = rs.cat("images"), rs.cat("latents")[: len(rs.cat("images"))]
    yaw_true = truth[:, PARAM_SPACE.idx("yaw")]
    order = yaw_true.abs().argsort()
    rows = []
    for kind, picks in (("turned", order[-k:].flip(0)), ("frontal", order[:k])):
        for i in picks.tolist():
            t0 = time.perf_counter()
            out = project(G, images[i:i + 1].to(dev), steps=steps, perceptual=None, w_plus=True, seed=0)
            yaw = PARAM_SPACE.denormalize(reader(out["image"])[0].cpu())[0, PARAM_SPACE.idx("yaw")]
            yaw_read = PARAM_SPACE.denormalize(reader(images[i:i + 1].to(dev))[0].cpu())[0, PARAM_SPACE.idx("yaw")]
            rows.append(dict(kind=kind, index=i, yaw_true=float(yaw_true[i]), yaw_oracle_render=float(yaw_read),
                             yaw_oracle_projection=float(yaw), psnr=float(out["psnr"])))
            print(f"  {kind:<8} render {i:>4}: true yaw {rows[-1]['yaw_true']:+.2f}, oracle {float(yaw_read):+.2f}; "
                  f"projection PSNR {out['psnr']:.1f} dB, oracle yaw {float(yaw):+.2f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return rows


def run(args):
    from src.embedded.oracle import load_oracle
    from src.stylegan.loaders import load_generator

    G = load_generator(args.generator, args.device)
    reader = gq.OracleReader(load_oracle(args.oracle, args.device))
    res, n = int(G.img_resolution), args.samples
    keep = max(64, 2 * args.project)
    print(f"device {device_name(args.device)}; torch {torch.__version__}; generator {args.generator} ({res} px); "
          f"oracle {args.oracle}; {n} samples each; psi {args.psi}; constant noise; seed {args.seed}", flush=True)
    t0 = time.perf_counter()
    gs = read_set("generator", gq.generator_batches(G, n, args.seed, args.batch, args.psi), reader, n)
    rs = read_set("renders", gq.render_batches(n, args.seed + 1, res, args.device, args.batch), reader, n, keep)
    rs2 = read_set("renders #2", gq.render_batches(n, args.seed + 2, res, args.device, args.batch), reader, n, 0)
    ga, ra, ra2 = gs.cat("attributes"), rs.cat("attributes"), rs2.cat("attributes")
    rows, table = coverage_table(ga, ra)
    worst = sorted(rows, key=lambda r: r["ratio"] if math.isfinite(r["ratio"]) else math.inf)[:5]
    sharp_g, sharp_r = float(gs.cat("sharpness").mean()), float(rs.cat("sharpness").mean())
    result = dict(
        device=device_name(args.device), generator=str(args.generator), oracle=str(args.oracle), samples=n,
        seed=args.seed, psi=args.psi, coverage=rows, coverage_min=worst[0]["ratio"],
        coverage_worst={r["attribute"]: r["ratio"] for r in worst},
        fd_attributes=gq.frechet_distance(ra, ga), fd_attributes_floor=gq.frechet_distance(ra, ra2),
        fd_trunk=gq.frechet_distance(rs.cat("trunk"), gs.cat("trunk")),
        fd_trunk_floor=gq.frechet_distance(rs.cat("trunk"), rs2.cat("trunk")),
        sharpness_g=sharp_g, sharpness_renders=sharp_r, sharpness_ratio=sharp_g / sharp_r,
        pose=pose_block(gs, rs))
    direction, r2, spread = yaw_direction(gs)
    result["yaw_direction"] = dict(heldout_r2=r2, w_rms_distance=spread)
    print(f"coverage (5..95 percentile range of the oracle's readings, natural units):\n{table}")
    print("worst coverage: " + ", ".join(f"{k} {v:.2f}" for k, v in result["coverage_worst"].items()))
    print(f"Frechet distance, oracle outputs:        G vs renders {result['fd_attributes']:.3f}   "
          f"renders vs renders {result['fd_attributes_floor']:.3f}")
    print(f"Frechet distance, oracle trunk (pooled): G vs renders {result['fd_trunk']:.3f}   "
          f"renders vs renders {result['fd_trunk_floor']:.3f}")
    print(f"sharpness (Laplacian variance): G {sharp_g:.4f}, renders {sharp_r:.4f}, ratio {result['sharpness_ratio']:.3f}")
    for name, p in result["pose"].items():
        print(f"pose {name}: |{name}| > {TURNED}: renderer truth {p['turned_truth']:.1%}, oracle on renders "
              f"{p['turned_oracle_renders']:.1%}, oracle on G {p['turned_oracle_g']:.1%} (max |{name}| "
              f"{p['max_abs_oracle_g']:.2f}); std truth "
              f"{p['std_truth']:.3f}, oracle renders {p['std_oracle_renders']:.3f}, oracle G {p['std_oracle_g']:.3f}; "
              f"oracle vs truth on renders: r {p['oracle_vs_truth_corr']:.3f}, MAE {p['oracle_vs_truth_mae']:.3f}")
    print(f"yaw direction in W (ridge): held-out R^2 of oracle yaw ~ W {r2:.3f}; rms |w - mean w| {spread:.2f}")
    frame = min(res, 56)
    if args.sheet:
        write_sheet(args.sheet, gs, rs, frame)
        print(f"wrote {args.sheet}")
    if args.yaw_sweep:
        yaw = write_yaw_sweep(args.yaw_sweep, G, reader, gs.cat("latents")[:6], direction, spread, frame)
        result["yaw_direction"]["sweep_oracle_yaw"] = [[round(float(v), 3) for v in row] for row in yaw]
        print(f"wrote {args.yaw_sweep}; oracle yaw at -1 / 0 / +1 x rms distance, mean over rows: "
              f"{float(yaw[:, 0].mean()):+.2f} / {float(yaw[:, 4].mean()):+.2f} / {float(yaw[:, -1].mean()):+.2f}")
    if args.project:
        print(f"projection into G (W+, pixel loss, {args.project_steps} steps):")
        result["projection"] = project_renders(G, reader, rs, args.project, args.project_steps)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    print(f"total {result['wall_s']:.0f} s")
    if args.json:
        from src.utils.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    return result


def main(argv=None) -> int:
    return exit_code(lambda: run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
