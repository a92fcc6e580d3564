#!/usr/bin/env bash
# One chunk of a training run (any experiment= whose checkpoint is tens of MiB: the animator's is 29 MiB,
# the small CLIP's and the oracle's less) on a GPU machine that starts bare: the run's last.ckpt comes in
# as parts from STATE_IN, trains for TRAIN_S seconds of wall clock, stops with SIGTERM (the run saves
# that exact step), and goes back as parts of at most 15 MiB with their sha256 in $OUT/run_state, beside
# chunk.log and metrics.csv (and the exported file once the run reaches its max_steps). The GAN, whose
# checkpoint is 172 MiB, has its compact state: scripts/device/gan_chunk.sh.
#
# First chunk, as a device run from the repository root (timeout_s 600):
#   EXP=embedded_animator bash scripts/device/train_chunk.sh            carry [".whl"] (scripts/device/site.sh)
# Every next chunk: put what came back into .carry/run_state here,
#   rm -rf .carry/run_state && mkdir -p .carry/run_state && cp <files_at>/run_state/* .carry/run_state/
# and run the same command with carry [".whl", ".carry/run_state"]. Keep a copy of each chunk's
# parts outside the repository: they are the run. `bash scripts/device/travel.sh size .whl
# .carry/run_state` tells whether the tree still fits 64 MiB; if not, run from `travel.sh code` plus the
# assets the experiment reads (e.g. travel.sh code assets/stylegan2_synthetic128.safetensors ...).
#
# Settings (environment): EXP (required), TRAIN_S seconds of training (default 450), EXTRA= more
# overrides, NAME (run name, default chunk-run), STATE_IN (.carry/run_state), HW=gpu, RUNS (work
# folder). A CPU smoke run: HW=cpu TRAIN_S=40 EXP=embedded_animator EXTRA="data.batch_size=2"
set -u
cd "$(dirname "$0")/../.."
. scripts/device/site.sh
EXP=${EXP:?EXP=<experiment> is required, e.g. EXP=embedded_animator}
TRAIN_S=${TRAIN_S:-450}
STATE_IN=${STATE_IN:-.carry/run_state}
NAME=${NAME:-chunk-run}
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_chunk}
OUT=${OUT:-$RUNS/out}
start=$(date +%s)
. scripts/device/timed_train.sh
task=$(sed -n 's#^ *- override /task: *\([a-z_]*\).*#\1#p' "conf/experiment/$EXP.yaml" 2>/dev/null | head -1)
[ -n "$task" ] || { echo "error: conf/experiment/$EXP.yaml names no task (- override /task: ...)"; exit 2; }
RUN=$RUNS/$task/runs/$NAME
rm -rf "$RUN" "$OUT/run_state" && mkdir -p "$RUN/checkpoints" "$OUT/run_state"
[ "${HW:-gpu}" = gpu ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

step() { python -c "import sys, torch; print(torch.load(sys.argv[1], map_location='cpu', weights_only=True).get('global_step', 0))" "$1"; }
step0=0
if [ -f "$STATE_IN/last.ckpt.sha256" ]; then
  cat "$STATE_IN"/last.ckpt.part-* > "$RUN/checkpoints/last.ckpt"
  want=$(cut -d' ' -f1 "$STATE_IN/last.ckpt.sha256")
  got=$(sha256sum "$RUN/checkpoints/last.ckpt" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "error: the parts in $STATE_IN do not make the checkpoint they came from (sha256)"; exit 2; }
  step0=$(step "$RUN/checkpoints/last.ckpt") || exit 2
  echo "resuming $EXP at step $step0"
else
  echo "no state in $STATE_IN: the first chunk starts from scratch"
fi

# shellcheck disable=SC2086
timed_train "$TRAIN_S" "$RUNS/train.log" python train.py experiment="$EXP" name="$NAME" paths.log_dir="$RUNS" \
  hardware="${HW:-gpu}" logger=csv test=false ${EXTRA:-}
cp "$RUNS/train.log" "$OUT/chunk.log"
[ $rc -eq 0 ] || [ $rc -eq 143 ] || exit 1
ckpt=$RUN/checkpoints/last.ckpt
[ -f "$ckpt" ] || { echo "error: the run left no $ckpt"; exit 1; }
split -b 15M -d "$ckpt" "$OUT/run_state/last.ckpt.part-"
(cd "$RUN/checkpoints" && sha256sum last.ckpt) > "$OUT/run_state/last.ckpt.sha256"
cp "$RUN/csv/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
find "$RUN" -maxdepth 1 -name "*.safetensors" -exec cp {} "$OUT/" \;  # the export, once max_steps is reached
step1=$(step "$ckpt")
echo "chunk of $EXP: step $step0 -> $step1 (+$((step1 - step0))) in $train_s s of training (start-up" \
  "included), wall $(($(date +%s) - start)) s; rc $rc ($([ $rc -eq 0 ] && echo "max_steps reached" ||
  echo "stopped, resumable")); state $(du -cb "$OUT"/run_state/last.ckpt.part-* | tail -1 | cut -f1) bytes in" \
  "$(ls "$OUT"/run_state/last.ckpt.part-* | wc -l) part(s)" | tee -a "$OUT/chunk.log"
ls -la "$OUT" "$OUT/run_state"
