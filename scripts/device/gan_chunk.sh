#!/usr/bin/env bash
# One chunk of the embedded 128 px StyleGAN2 training (experiment=embedded_stylegan) on a GPU machine
# that starts bare: restore the compact state (src/embedded/training/gan_state.py) from STATE_IN if it
# is there, train for TRAIN_S seconds of wall clock, stop with SIGTERM (the run saves that exact step),
# and export the compact state into $OUT/gan_state (manifest.json + 4 shards of <= 16 MiB, 56.8 MiB).
# Prints the chunk's kimg, img/s and wall time; $OUT/chunk.log, $OUT/metrics.csv and the built CUDA
# ops, packed (lgfa_ops_<key>.so.xz, 2.5 MiB), come back too (8 files in all).
#
# The run's state lives in the repository, in runs/embedded_stylegan/ (the machines keep nothing, and
# only what is committed outlasts a working session). First chunk (no state yet), as a device run
# from the repository root, timeout_s 600, carry [".whl"] (scripts/device/site.sh):
#   bash scripts/device/gan_chunk.sh
# Keep what came back (checked first; a bad copy never replaces a good state), then commit it:
#   python -m src.embedded.training.gan_state keep <files_at>/gan_state runs/embedded_stylegan
# Every next chunk: the tree that travels must stay under 64 MiB and the state is 56.8 MiB, so send
# the code alone (~1.3 MiB) with the state, and the same command reading it:
#   bash scripts/device/travel.sh code runs/embedded_stylegan    (`travel.sh all` after the run)
#   STATE_IN=runs/embedded_stylegan bash scripts/device/gan_chunk.sh
# with carry [".whl", ".carry/ops"], after `mkdir -p .carry/ops && cp <files_at>/lgfa_ops_*.so.xz .carry/ops/`
# (the ops the last chunk built: no compile; code 1.3 + state 56.8 + wheels 2.7 + ops 2.5 = 63.3 MiB).
# Without assets/ the validation FD uses the fixed random-feature net (the oracle is not there); the
# oracle's figures come afterwards, from the kept state's G_ema:
#   python -m src.embedded.training.gan_state generator runs/embedded_stylegan G.safetensors
#   python bench/bench_gan_quality.py --generator G.safetensors
#
# Settings (environment): TRAIN_S seconds of training (default 450: with start-up, restore and
# export the command ends within ~8.5 min), STATE_IN (default .carry/gan_state), EXTRA= more overrides,
# HW=gpu, RUNS (work folder, default $TMPDIR/lgfa_gan). A CPU smoke run: HW=cpu TRAIN_S=30 EXTRA="..."
set -u
cd "$(dirname "$0")/../.."
. scripts/device/site.sh
TRAIN_S=${TRAIN_S:-450}
STATE_IN=${STATE_IN:-.carry/gan_state}
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_gan}
OUT=${OUT:-$RUNS/out}
NAME=embedded-stylegan
RUN=$RUNS/stylegan/runs/$NAME
STATE=src.embedded.training.gan_state
. scripts/device/timed_train.sh
start=$(date +%s)
rm -rf "$RUN" && mkdir -p "$RUN/checkpoints" "$OUT"
[ "${HW:-gpu}" = gpu ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

kimg0=0
if [ -f "$STATE_IN/manifest.json" ]; then
  python -m $STATE import "$STATE_IN" "$RUN/checkpoints/last.ckpt" || exit 2
  kimg0=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['kimg'])" "$STATE_IN/manifest.json")
else
  echo "no state in $STATE_IN: the first chunk starts from scratch"
fi
oracle=""
[ -f assets/oracle_synthetic.safetensors ] || oracle="model.validation.oracle_path=null"

# shellcheck disable=SC2086
timed_train "$TRAIN_S" "$RUNS/train.log" python train.py experiment=embedded_stylegan name=$NAME \
  paths.log_dir="$RUNS" hardware=${HW:-gpu} logger=csv test=false model.output.export_path=null $oracle ${EXTRA:-}
if [ $rc -ne 0 ] && [ $rc -ne 143 ]; then
  cp "$RUNS/train.log" "$OUT/chunk.log"; exit 1
fi

python -m $STATE export "$RUN/checkpoints/last.ckpt" "$OUT/gan_state" || exit 1
cp "$RUN/csv/metrics.csv" "$OUT/metrics.csv" 2>/dev/null
python - "$OUT/gan_state/manifest.json" "$kimg0" $train_s $(($(date +%s) - start)) "$OUT/metrics.csv" <<'EOF' | tee "$OUT/chunk.log"
import csv, json, os, sys
m = json.load(open(sys.argv[1]))
kimg0, train_s, wall_s = float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
fd = ""
if os.path.isfile(sys.argv[5]):
    rows = [r for r in csv.DictReader(open(sys.argv[5])) if r.get("val/fd")]
    fd = f", val/fd {float(rows[-1]['val/fd']):.3f} at step {rows[-1].get('step')}" if rows else ""
done = m["kimg"] - kimg0
print(f"chunk: kimg {kimg0:.1f} -> {m['kimg']:.1f} (+{done:.1f}), {done * 1000 / max(train_s, 1):.0f} img/s over "
      f"{train_s} s of training (start-up included), wall {wall_s} s{fd}; step {m['global_step']}, "
      f"iteration {m['iteration']}; state {sum(s['bytes'] for s in m['shards']) / 2**20:.1f} MiB")
EOF
tail -c 4000000 "$RUNS/train.log" >> "$OUT/chunk.log"
send_built_ops "$OUT"   # the 8th file: next chunks skip the compile (header of site.sh)
ls -la "$OUT" "$OUT/gan_state"
