"""How much identity drift the inference projection could remove with a perfect identity reader.

    python scripts/projection_reader_bound.py --faces 12 --projections 0.5 1.0 [--device cuda] [--out b.json]

The projection (model.inference.identity_projection) removes each offset's first-order effect on an identity
reader's readings. The shipped reader is a separate, weaker network than the judge (the oracle that
the evaluation scores drift with). This diagnostic runs the same evaluation (src.eval.runner) three
ways on the same faces and prompts: no projection; the projection with the shipped reader; and the
projection with the judge itself as the reader (its 20 identity outputs). The last is an upper bound
for research, never a setting to ship or report as the method: it removes the directions the judge's
own gradients respond to, its reading noise included, so it optimises against the evaluator. If even
it leaves drift, that drift is beyond first order; if it removes much more than the shipped reader,
the gap is between the two networks' gradients, which a better-scoring reader need not close
(a reader of R^2 0.87 instead of 0.79 removed no more; docs/results/motion_fidelity.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.utils.errors import UserError, exit_code  # noqa: E402

KEYS = ("text_top1", "oracle_right_way", "oracle_reach", "oracle_identity_drift", "oracle_identity_drift_raw")


class JudgeIdentity(nn.Module):
    """The oracle's identity outputs: img [N, 3, H, W] -> [N, 20] in the order of PARAM_SPACE.identity_names."""

    def __init__(self, oracle: nn.Module):
        super().__init__()
        from src.embedded import PARAM_SPACE

        self.oracle = oracle
        self.register_buffer("index", torch.tensor([PARAM_SPACE.idx(n) for n in PARAM_SPACE.identity_names]))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.oracle(img)[:, self.index]


def bound(animator: str, oracle_path: str, reader: str, faces: int, frames: int, projections: list[float],
          device: str, concepts=None) -> dict:
    from src.embedded import PARAM_SPACE
    from src.eval.runner import evaluate
    from src.identity.reader import IdentityAttributeReader, load_identity_reader
    from src.embedded.oracle import load_oracle
    from src.pipeline import FaceAnimator

    module = FaceAnimator.from_pretrained(animator, device=device)
    oracle = load_oracle(oracle_path, device=device).eval()
    readers = {"reader": load_identity_reader(reader, device=device),
               "judge": IdentityAttributeReader(JudgeIdentity(oracle), PARAM_SPACE.identity_names).eval()}
    run = lambda p: evaluate(module, faces, frames, batch=faces, oracle=oracle, concepts=concepts,  # noqa: E731
                             progress=False, identity_projection=p)
    rows = {"none": run(0.0)["summary"]}
    for name, net in readers.items():
        module.__dict__["_projection_reader"] = net  # the reader animate() projects with
        for p in projections:
            rows[f"{name} {p:g}"] = run(p)["summary"]
    return {"faces": faces, "frames": frames, "animator": str(animator), "reader": str(reader),
            "rows": {k: {key: v[key] for key in KEYS} | {"drift_by_attribute": v["oracle_identity_drift_by_attribute"]}
                     for k, v in rows.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--animator", default=str(ROOT / "assets/animator_synthetic.safetensors"))
    ap.add_argument("--oracle", default=str(ROOT / "assets/oracle_synthetic.safetensors"))
    ap.add_argument("--reader", default=str(ROOT / "assets/identity_reader_synthetic.safetensors"))
    ap.add_argument("--faces", type=int, default=12)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--projections", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--concepts", nargs="*", default=None, help="default: the domain's prompt concepts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    result = None

    def measure() -> None:
        nonlocal result
        if args.faces < 1 or args.frames < 2:
            raise UserError("--faces must be >= 1 and --frames >= 2")
        if not all(0 < p <= 1 for p in args.projections):
            raise UserError("--projections must be in (0, 1]")
        result = bound(args.animator, args.oracle, args.reader, args.faces, args.frames, args.projections,
                       args.device, args.concepts)

    status = exit_code(measure)
    if status:
        return status
    print(f"{'projection':<12} " + " ".join(f"{k.replace('oracle_', ''):>22}" for k in KEYS))
    for name, row in result["rows"].items():
        print(f"{name:<12} " + " ".join(f"{row[k]:>22.3f}" for k in KEYS))
    if args.out:
        from src.utils.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
