"""Evaluate a trained animator over many faces x every prompt of its domain.

    python evaluate.py                                          # the embedded default, 200 faces, on a CPU
    python evaluate.py faces=200 frames=16 device=cuda output=results.json
    python evaluate.py checkpoint=logs/animator/runs/my-exp/checkpoints/last.ckpt oracle=null
    python evaluate.py face_sampling=near_average face_net=checkpoints/model_ir_se50.pth
    python evaluate.py phrasings=heldout faces=48 paper_metrics=false   # paraphrases never trained on
    python evaluate.py phrasings=my_phrasings.json                      # {"smiling": ["beaming", ...], ...}

Arguments are Hydra-style key=value overrides of conf/evaluate.yaml (no output folders are created).
Prints a per-concept table (CLIP top-1 and score; with the embedded domain's oracle the right-way
rate, reach and identity drift; frame-0 PSNR; smoothness; the paper's temporal MS-SSIM, shape ACD
and face ACD, with the network that gave it) and writes every metric as JSON to ``output``. Bad
input ends with one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def run(cfg) -> dict:
    """Evaluate as ``cfg`` says; returns the result (also written to cfg.output)."""
    from src.eval.paper_scores import face_network
    from src.eval.phrasings import resolve_phrasings
    from src.eval.runner import evaluate, phrasing_table, summary_table
    from src.pipeline import FaceAnimator
    from src.config.cli import parse_device
    from src.utils.io import atomic_write_text, check_output_path

    # both before any work: a bad device or an unwritable output would otherwise fail after the evaluation
    device = str(parse_device(cfg.device))
    check_output_path(cfg.output)
    cfg.device = device
    overrides = {"inference.projection_reader": cfg.projection_reader} if cfg.get("projection_reader") else None
    pipeline = FaceAnimator.from_pretrained(cfg.checkpoint, device=cfg.device, overrides=overrides)
    oracle = None
    oracle_path = cfg.get("oracle")
    if oracle_path == "auto":
        default = Path(cfg.paths.assets) / "oracle_synthetic.safetensors"
        embedded = pipeline.config.get("domain", {}).get("name") == "synthetic"
        oracle_path = str(default) if embedded and default.is_file() else None
    if oracle_path:
        from src.embedded.oracle import load_oracle

        oracle = load_oracle(oracle_path, device=cfg.device).eval()
    paper_metrics = bool(cfg.get("paper_metrics", True))
    face_net, face_net_name = face_network(pipeline.domain, cfg.face_net, cfg.paths.assets, cfg.paths.checkpoints,
                                           cfg.device) if paper_metrics else (None, "n/a (paper_metrics=false)")
    concepts = list(cfg.concepts) if cfg.get("concepts") else None
    phrasings = resolve_phrasings(cfg.get("phrasings"), pipeline.config["domain"],
                                  concepts or pipeline.config["domain"]["prompts"]["concepts"])
    result = evaluate(pipeline, cfg.faces, cfg.frames, cfg.batch, cfg.decay, cfg.strength, oracle, concepts,
                      face_seed_offset=cfg.face_seed_offset, motion_total=cfg.get("motion_total"),
                      identity_projection=cfg.get("identity_projection"), face_sampling=cfg.face_sampling,
                      face_net=face_net, face_net_name=face_net_name, paper_metrics=paper_metrics,
                      phrasings=None if cfg.get("phrasings") in (None, "template") else phrasings,
                      text_adapter=cfg.get("text_adapter"))
    result["settings"]["checkpoint"] = str(cfg.checkpoint)
    result["settings"]["oracle"] = oracle_path
    atomic_write_text(cfg.output, json.dumps(result, indent=2))
    print(summary_table(result))
    by_phrasing = phrasing_table(result)
    if by_phrasing:
        print("\n" + by_phrasing)
    return result


def main(argv: list[str] | None = None) -> int:
    from src.config.cli import run_command

    def measure(cfg) -> str:
        run(cfg)
        return f"wrote {cfg.output}"

    return run_command("evaluate", argv, __doc__, measure)


if __name__ == "__main__":
    sys.exit(main())
