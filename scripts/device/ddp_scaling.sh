#!/usr/bin/env bash
# DDP scaling of one animator training step on the GPUs of this machine (bench/bench_ddp_animator.py),
# then the DDP equivalence check (1 GPU x 2B videos vs 2 GPUs x B videos), in one command of < 9 min.
#
#   bash scripts/device/ddp_scaling.sh            # results (JSON, logs, safetensors) in $OUT
#
# Stages (each logged to $OUT/<stage>.log, time-boxed with timeout; a failed stage does not stop
# the next ones; stages are skipped when the time budget BUDGET (seconds, default 480) runs out):
#   info, ops (build the CUDA ops once, so no rank times a ninja build), bench_k1, bench_k2,
#   eq_k1 + eq_k2 + compare, eq_control (K=1 run twice: the run-to-run noise floor),
#   bench_k4 / bench_k8 (when nvidia-smi lists that many GPUs), summary.
# Knobs (env): RES B STEPS WARMUP (benchmark: 1024 4 20 5), EQ_RES EQ_B EQ_STEPS EQ_PRECISION
# (equivalence: 256 4 10 --fp32), BUDGET, EXTRA (more bench options, e.g. "--input-clip-model RN50").
set -u
cd "$(dirname "$0")/../.."
TMP=${TMPDIR:-/tmp}
OUT=${OUT:-$TMP/ddp_scaling}
mkdir -p "$OUT"
export LGFA_LPIPS_DIR=${LGFA_LPIPS_DIR:-$PWD/.carry/lpips} PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8
RES=${RES:-1024} B=${B:-4} STEPS=${STEPS:-20} WARMUP=${WARMUP:-5} EXTRA=${EXTRA:-}
EQ_RES=${EQ_RES:-256} EQ_B=${EQ_B:-4} EQ_STEPS=${EQ_STEPS:-10} EQ_PRECISION=${EQ_PRECISION:---fp32}
BUDGET=${BUDGET:-480}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)
# CPU threads per process: cores / GPUs for every K (torchrun would set 1 for K > 1 only, and one
# process alone would take all cores): the K=1 baseline and the K-GPU runs then use the same setting
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / (NGPU > 0 ? NGPU : 1) ))}
BENCH=bench/bench_ddp_animator.py
OPS=""

log() { echo "[$(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$OUT/stages.txt"; }

# stage NAME LIMIT_S MIN_S cmd...: run with timeout min(LIMIT, time left); skip when less than MIN_S is left
stage() {
  local name=$1 limit=$2 need=$3; shift 3
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt "$need" ]; then
    log "skip $name (${left}s left of the ${BUDGET}s budget, needs ${need}s)"
    return 99
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  log "start $name (limit ${limit}s): $*"
  timeout -k 15 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  log "end $name rc=$rc$([ $rc -eq 124 ] && echo ' (timed out)')"
  return $rc
}

TR="python -m torch.distributed.run --standalone"   # torchrun (timeout cannot run a shell function)

show_table() { grep -E '^\||^\(phase|^error|Error' "$OUT/$1.log" | tail -n 40 || true; }

bench_k() {
  local k=$1 base=""
  [ -f "$OUT/bench_k1.json" ] && [ "$k" -gt 1 ] && base="--baseline-json $OUT/bench_k1.json"
  stage "bench_k$k" 170 60 $TR --nproc_per_node="$k" $BENCH --res "$RES" --batch "$B" --steps "$STEPS" --warmup "$WARMUP" \
    --json "$OUT/bench_k$k.json" $base $OPS $EXTRA
  local rc=$?
  [ $rc -ne 99 ] && show_table "bench_k$k"
  [ $rc -ne 0 ] && [ $rc -ne 99 ] && tail -n 25 "$OUT/bench_k$k.log"
  return 0
}

log "GPUs: $NGPU; OMP_NUM_THREADS=$OMP_NUM_THREADS; OUT=$OUT; LGFA_LPIPS_DIR=$LGFA_LPIPS_DIR; bench ${RES}px B=$B steps=$STEPS warmup=$WARMUP $EXTRA"
stage info 60 10 bash -c 'nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv; nvidia-smi topo -m;
  python -c "import torch, sys; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\",
  torch.version.cuda, \"nccl\", torch.cuda.nccl.version())"'
cat "$OUT/info.log"
[ -f "$LGFA_LPIPS_DIR/lpips_alex.safetensors" ] || log "WARNING: no $LGFA_LPIPS_DIR/lpips_alex.safetensors (the LPIPS runs will fail)"

# one build of the CUDA ops before any multi-rank run (ranks would queue on the build lock anyway)
stage ops 300 60 python -c "import time, torch; t = time.time(); from src.ops.build import get_plugin; get_plugin(); \
print(f'CUDA ops ready in {time.time() - t:.1f}s')"
rc=$?
tail -n 3 "$OUT/ops.log"
if [ $rc -ne 0 ]; then
  OPS="--ops-impl ref"
  log "WARNING: the CUDA ops did not build (rc=$rc): benchmarking with the reference ops (slow, not the paper's setting)"
fi

bench_k 1
[ "$NGPU" -ge 2 ] && bench_k 2

# equivalence: the same global batches and init, 1 process x 2B videos vs 2 processes x B videos
if [ "$NGPU" -ge 2 ]; then
  EQ="$BENCH --res $EQ_RES --check-equivalence $EQ_STEPS $EQ_PRECISION $OPS"
  stage eq_k1 150 50 $TR --nproc_per_node=1 $EQ --batch $((2 * EQ_B)) --save-weights "$OUT/eq_k1.safetensors"; tail -n 3 "$OUT/eq_k1.log"
  stage eq_k2 150 50 $TR --nproc_per_node=2 $EQ --batch "$EQ_B" --save-weights "$OUT/eq_k2.safetensors"; tail -n 3 "$OUT/eq_k2.log"
  if [ -f "$OUT/eq_k1.safetensors" ] && [ -f "$OUT/eq_k2.safetensors" ]; then
    stage compare 60 5 python $BENCH --compare "$OUT/eq_k1.safetensors" "$OUT/eq_k2.safetensors" \
      --json "$OUT/compare.json"
    cat "$OUT/compare.log"
  fi
  # noise floor: the K=1 run again (differences here come from non-deterministic kernels, not from DDP)
  stage eq_control 150 90 $TR --nproc_per_node=1 $EQ --batch $((2 * EQ_B)) --save-weights "$OUT/eq_k1_again.safetensors"
  if [ -f "$OUT/eq_k1_again.safetensors" ]; then
    python $BENCH --compare "$OUT/eq_k1.safetensors" "$OUT/eq_k1_again.safetensors" > "$OUT/compare_control.log" 2>&1
    echo "== control (K=1 vs K=1):"; cat "$OUT/compare_control.log"
  fi
fi

# the product path: train.py with Lightning DDP over all GPUs (NCCL), a short smoke run of the
# embedded animator (global batch 2 x 8 videos); prints Lightning's it/s
if [ "$NGPU" -ge 2 ]; then
  stage lightning_ddp 120 80 python train.py experiment=embedded_animator hardware=ddp hardware.devices="$NGPU" \
    data.batch_size=8 trainer.max_steps=60 trainer.val_check_interval=30 model.validation.video_every_n_steps=0 \
    logger=csv paths.log_dir="$TMP/lgfa_ddp" name=ddp-smoke
  tail -c 600 "$OUT/lightning_ddp.log" | tr '\r' '\n' | grep -v '^$' | tail -n 4
fi

for k in 4 8; do
  [ "$NGPU" -ge "$k" ] && bench_k "$k"
done

log "summary"
python $BENCH --summarize "$OUT"/bench_k*.json 2>&1 | tee "$OUT/summary.md"
[ -f "$OUT/compare.log" ] && { echo; echo "equivalence (K=1 x $((2 * EQ_B)) vs K=2 x $EQ_B, ${EQ_RES}px, $EQ_STEPS steps):";
  grep -E "^\||EQUIVALENT|losses|spread|worst" "$OUT/compare.log"; } | tee -a "$OUT/summary.md"
cat "$OUT/stages.txt"
log "done"
