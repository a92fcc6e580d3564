"""Multi-GPU (DDP) scaling benchmark and equivalence check of ONE animator training step.

    torchrun --standalone --nproc_per_node=K bench/bench_ddp_animator.py [--res 1024] [--batch 4]
        [--steps 20] [--warmup 5] [--fp32] [--no-lpips] [--json OUT] [--baseline-json K1.json]
    python bench/bench_ddp_animator.py --tiny --device cpu --steps 2 --warmup 1 --no-lpips   # smoke test

    # equivalence of K ranks x batch B with 1 rank x batch K*B (weights after N Adam steps):
    python   bench/bench_ddp_animator.py --check-equivalence 10 --batch 8 --save-weights k1.safetensors
    torchrun --standalone --nproc_per_node=2 bench/bench_ddp_animator.py --check-equivalence 10 --batch 4 \
        --save-weights k2.safetensors
    python bench/bench_ddp_animator.py --compare k1.safetensors k2.safetensors
    python bench/bench_ddp_animator.py --summarize k1.json k2.json        # one table of several runs

The step is the paper's (src/systems/animator.py ``AnimatorModule.compute_losses``): a frozen
StyleGAN2-ADA config-f generator (random weights; 1024 px, fp16 in the top 4 resolutions, conv clamp
256 unless --fp32; CUDA ops), a ViT-B/32-sized CLIP with random weights for the loss (and, by
default, the same instance for the animator's inputs; ``--input-clip-model RN50`` gives the human
domain's separate RN50 input encoder), LPIPS-Alex at 224 px (weights from $LGFA_LPIPS_DIR), the
prompts of conf/domain/human.yaml and the loss weights of conf/loss/paper.yaml, train_frames 4,
B videos per GPU (paper: 4), Adam of ``configure_optimizers``. Only the animator's parameters
require grad; they are wrapped in torch DDP as Lightning's ``strategy=ddp`` does (defaults:
broadcast_buffers=True, 25 MB buckets, find_unused_parameters=False). With one process the step
runs without DDP, as Lightning's single-device strategy does (``--force-ddp`` wraps it anyway).

Batches, how the time is measured (and why this way) and the equivalence check are described in
bench/ddp_animator/batches.py, measure.py and equivalence.py; this file is the command line only.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.ddp_animator.cli import main, parse_args  # noqa: E402
from bench.ddp_animator.equivalence import WEIGHTS_FORMAT, compare, read_weights  # noqa: E402
from bench.ddp_animator.report import RESULT_FORMAT, summarize  # noqa: E402

__all__ = ["main", "parse_args", "compare", "read_weights", "summarize", "RESULT_FORMAT", "WEIGHTS_FORMAT"]

if __name__ == "__main__":
    sys.exit(main())
