#!/usr/bin/env bash
# On a GPU machine: the GAN training step's correctness checks and its throughput, in one command
# (about 6 min on one H100 including the first build of our CUDA ops):
#   bash scripts/device/gan_speed.sh          as a device run from the repository root, carry [".whl"] (scripts/device/site.sh)
# 1. the GPU tests of the step: CUDA-graph phases equal to eager ones, sync-free steps, and the
#    GPU resume parity of the animator (deterministic, bit-identical);
# 2. bench/bench_gan_training.py at batch 64 and 256 (fp16_res), eager and with
#    model.precision.cuda_graphs=true, each also with one fixed real batch (the renderer's share);
# 3. a profile of each setting at batch 64 (GPU busy time, kernels and host syncs per iteration).
# Everything printed also lands in $OUT/gan_speed.txt. Settings: BATCH ("64 256"), ITERS (96),
# SKIP_TESTS=1 to bench only, GRAPHS ("false true") the settings benched.
set -u
cd "$(dirname "$0")/../.."
. scripts/device/site.sh
OUT=${OUT:-${TMPDIR:-/tmp}/lgfa_speed}
mkdir -p "$OUT"
BATCH=${BATCH:-64 256}
ITERS=${ITERS:-96}
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  if [ "${SKIP_TESTS:-0}" != 1 ]; then
    timeout 300 python -m pytest -m gpu -q -s -p no:cacheprovider tests/test_gan_training.py tests/test_resume_exact.py \
      -k "recorded or sync_free or resume_on_the_gpu" 2>&1 | grep -E "largest|passed|failed|^E |Error" | head -40
  fi
  for graphs in ${GRAPHS:-false true}; do
    echo "== model.precision.cuda_graphs=$graphs"
    timeout 240 python bench/bench_gan_training.py --batch $BATCH --precision fp16_res --iters "$ITERS" \
      --warmup 64 --fixed-reals --profile --set precision.cuda_graphs=$graphs 2>&1 | grep -vE "^\s*$|UserWarning|_warn_once"
  done
} 2>&1 | tee "$OUT/gan_speed.txt"
