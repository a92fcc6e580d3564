#!/usr/bin/env bash
# On one GPU: the paper's recipe against our default on the embedded domain, option by option.
# Every variant is a short animator training run from scratch (STEPS steps x 16, side by side on the
# GPU), then evaluated with the attribute oracle on FACES held-out faces x every prompt:
#   ours        our default (conf/loss/default.yaml, variant ours)
#   paper       the authors' recipe: variant paper, slope 0.01, mapper width 1024, sum, local
#               negatives in groups of 4 (4 GPUs x 4 on one GPU), pool, whole CLIP fine-tuned,
#               the paper's inference step sizes
#   <option>    ours with that one option set to the paper's value
# Results: $RUNS/<variant>.json (evaluate.py) and the table $RUNS/paper_vs_ours.md (bench/paper_vs_ours_table.py).
# STAGE=train | eval | all (default): the two halves can run as separate calls on the same machine.
#   RUNS=/tmp/pvo STEPS=600 FACES=60 EVAL_JOBS=3 SEED=7 bash scripts/device/paper_vs_ours.sh   (one H100: ~4.5 min of
#   training, ~1 min of evaluation); another SEED gives a second training run of every variant
set -u
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-${TMPDIR:-/tmp}/paper_vs_ours}
STEPS=${STEPS:-600}
FACES=${FACES:-40}
MAX_MIN=${MAX_MIN:-6}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 LGFA_LPIPS_DIR=${LGFA_LPIPS_DIR:-$PWD/.carry/lpips}
common="paths.log_dir=$RUNS hardware=gpu hardware.cpu_threads=1 logger=csv test=false data.batch_size=16 \
trainer.max_steps=$STEPS +trainer.max_time=00:00:0$MAX_MIN:00 trainer.val_check_interval=$STEPS data.val_batches=1 \
model.validation.video_every_n_steps=0 seed=${SEED:-7}"
PAPER_NET="model.net.variant=paper model.net.rnn_slope=0.01 model.net.mapper_hidden=1024 model.inference.motion_total=paper"
declare -A VARIANTS=(
  [ours]=""
  [paper]="$PAPER_NET loss=paper loss.local_group=4 model.train.clip_finetune=all"
  [rnn_slope]="model.net.rnn_slope=0.01"
  [variant]="model.net.variant=paper model.inference.motion_total=paper"
  [latent_sum]="loss.latent_reduction=sum"
  [negatives_local]="loss.negatives=local loss.local_group=4"
  [resize_pool]="loss.resize_224=pool"
  [clip_all]="model.train.clip_finetune=all"
  [text_only]="model.net.image_branch=false"
)
nvidia-smi --query-gpu=name --format=csv,noheader > "$RUNS/gpu.txt"
start=$(date +%s)
if [ "${STAGE:-all}" != eval ]; then
  for v in "${!VARIANTS[@]}"; do
    python train.py name=pvo-$v $common ${VARIANTS[$v]} > "$RUNS/$v.train.log" 2>&1 &
  done
  wait
  echo "training: $(( $(date +%s) - start )) s" > "$RUNS/timing.txt"
fi
[ "${STAGE:-all}" = train ] && exit 0
# evaluation: EVAL_JOBS at a time (default all), each with its share of the CPU threads; the oracle's
# figures only (paper_metrics=false: MS-SSIM and the ACDs run on the CPU in float64 and would dominate)
n=0
EVAL_JOBS=${EVAL_JOBS:-${#VARIANTS[@]}}
for v in "${!VARIANTS[@]}"; do
  ckpt=$RUNS/animator/runs/pvo-$v/animator.safetensors
  [ -f "$ckpt" ] || continue
  OMP_NUM_THREADS=$(( ($(nproc) + EVAL_JOBS - 1) / EVAL_JOBS )) python evaluate.py checkpoint="$ckpt" \
    faces=$FACES batch=$FACES paper_metrics=false device=cuda output="$RUNS/$v.json" > "$RUNS/$v.eval.log" 2>&1 &
  n=$((n + 1)); [ $((n % EVAL_JOBS)) = 0 ] && wait
done
wait
echo "evaluation: $(( $(date +%s) - start )) s" >> "$RUNS/timing.txt"
python bench/paper_vs_ours_table.py "$RUNS" > "$RUNS/paper_vs_ours.md"
cat "$RUNS/paper_vs_ours.md"
