#!/usr/bin/env bash
# On a GPU machine: the GPU tests and benchmarks of the fast paths (channels-last ops, CUDA graphs of
# the GAN training phases and of inference), as a device run from the repository root with
# carry [".whl"] (scripts/device/site.sh):
#   PART=tests bash scripts/device/fast_paths.sh   # ~4 min with the first build of our CUDA ops
#   PART=gan   bash scripts/device/fast_paths.sh   # GAN training: eager, channels-last, + CUDA graphs
#   PART=infer bash scripts/device/fast_paths.sh   # generator and text -> frames, eager and graphed
#   PART=memory bash scripts/device/fast_paths.sh  # animator training step with and without generator
#                                                  # checkpointing; a 1024 px video's peak memory
# PART="tests memory" runs those two in turn; PART=all (default) runs the four (more than one device
# command allows on a fresh machine). Everything printed also lands in $OUT/fast_paths_<part>.txt. ITERS (64) sets the
# GAN bench's timed iterations.
set -u
cd "$(dirname "$0")/../.."
. scripts/device/site.sh
OUT=${OUT:-${TMPDIR:-/tmp}/lgfa_fast}
mkdir -p "$OUT"
PART=${PART:-all}
ITERS=${ITERS:-64}
CL="G_kwargs.synthesis_kwargs.fp16_channels_last=true D_kwargs.block_kwargs.fp16_channels_last=true"
quiet() { grep -vE "^\s*$|UserWarning|_warn_once|warnings.warn"; }

tests() {
  timeout 420 python -m pytest -m gpu -q -p no:cacheprovider tests/test_channels_last_gpu.py tests/test_ops_gpu.py \
    tests/test_bias_act_epilogue_gpu.py tests/test_stylegan_gpu.py tests/test_graph_cache_gpu.py \
    tests/test_gan_training.py tests/test_generator_checkpointing.py tests/test_half_dtype.py 2>&1 | grep -E "passed|failed|^E |^FAILED|Error" | head -60
}

gan() {
  for setting in "precision.cuda_graphs=false" "precision.cuda_graphs=false $CL" "precision.cuda_graphs=true $CL"; do
    echo "== $setting"
    extra=""
    [[ "$setting" == *"cuda_graphs=true"* ]] && extra="--eager-render"  # the render graph's gain, same call
    # shellcheck disable=SC2086
    timeout 240 python bench/bench_gan_training.py --batch 64 256 --precision fp16_res --iters "$ITERS" --warmup 64 \
      $extra --set $setting 2>&1 | quiet | grep -E "^\||device|failed|Error"
  done
  echo "== profile, channels-last, eager (GPU time by op)"
  # shellcheck disable=SC2086
  timeout 120 python bench/bench_gan_training.py --batch 256 --precision fp16_res --iters 8 --warmup 64 --profile \
    --set precision.cuda_graphs=false $CL 2>&1 | quiet | sed -n '/^profile/,$p' | head -36
  echo "== profile, channels-last + CUDA graphs"
  # shellcheck disable=SC2086
  timeout 120 python bench/bench_gan_training.py --batch 256 --precision fp16_res --iters 16 --warmup 64 --profile \
    --set precision.cuda_graphs=true $CL 2>&1 | quiet | sed -n '/^profile/,$p' | head -20
}

infer() {
  timeout 200 python bench/bench_generator.py --res 1024 --batch 1 16 --no-ref --noise const --cuda-graphs 2>&1 | quiet
  timeout 90 python bench/profile_generator.py --res 1024 --batch 16 --channels-last --cuda-graphs --rows 12 2>&1 | quiet
  timeout 300 python bench/bench_animate_gpu.py --res 1024 128 --videos 1 4 --precision fp16 bf16 fp32 --iters 10 \
    --cuda-graphs 2>&1 | quiet
}

memory() {
  for res in 0 512 256 64; do  # model.train.generator_checkpoint_res (0: off); LPIPS needs weights: off
    echo "== generator blocks >= $res px recomputed (0: none)"
    timeout 100 python bench/bench_ddp_animator.py --res 1024 --batch 4 --steps 5 --warmup 2 --no-lpips \
      --checkpoint-res "$res" 2>&1 | grep -E "step ms \(|backward ms|peak memory|rror"
  done
  echo "== generator blocks >= 256 px recomputed, fp16 blocks NCHW, profiled"
  timeout 100 python bench/bench_ddp_animator.py --res 1024 --batch 4 --steps 5 --warmup 2 --no-lpips \
    --checkpoint-res 256 --nchw --profile 2 2>&1 | grep -E "step ms \(|backward ms|peak memory|^profile|rror"
  timeout 120 python bench/bench_animate_gpu.py --res 1024 --videos 1 4 --precision fp16 --iters 5 --cuda-graphs \
    2>&1 | quiet | grep -E "^\||^#"
  timeout 120 python bench/bench_animate_gpu.py --res 1024 --videos 1 4 --precision fp16 --iters 5 --cuda-graphs \
    --nchw 2>&1 | quiet | grep -E "^\| 1024"
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for p in tests gan infer memory; do
  if [ "$PART" = all ] || [[ " $PART " == *" $p "* ]]; then
    echo "#### $p"
    $p 2>&1 | tee "$OUT/fast_paths_$p.txt"
  fi
done
