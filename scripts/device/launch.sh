#!/usr/bin/env bash
# On the GPU machine: a short smoke run of every stage, then (if it passed) the real pipeline in
# the background (setsid), time-boxed per stage with trainer.max_time. Results: $TMPDIR/lgfa_runs
# (TMPDIR defaults to /tmp; poll.sh reads the same folder).
set -u
cd "$(dirname "$0")/../.."
# Lightning wants DD:HH:MM:SS with two-digit fields ("6" is refused at start-up)
minutes() { local m=$((10#$1)); printf "00:%02d:%02d:00" $((m / 60)) $((m % 60)); }
TMP=${TMPDIR:-/tmp}
export LGFA_LPIPS_DIR=${LGFA_LPIPS_DIR:-$PWD/.carry/lpips} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -rf "$TMP/lgfa_runs"
RUNS=$TMP/lgfa_runs \
EXTRA_ORACLE="+trainer.max_time=$(minutes ${ORACLE_MIN:-7}) ${X_ORACLE:-}" EXTRA_CLIP="+trainer.max_time=$(minutes ${CLIP_MIN:-7}) ${X_CLIP:-}" \
EXTRA_STYLEGAN="+trainer.max_time=$(minutes ${GAN_MIN:-13}) ${X_STYLEGAN:-}" \
EXTRA_ANIMATOR="+trainer.max_time=$(minutes ${ANIM_MIN:-6}) ${X_ANIMATOR:-}" \
setsid nohup bash scripts/device/train_embedded.sh > "$TMP/lgfa_pipeline.log" 2>&1 < /dev/null &
echo "launched pipeline"
S="trainer.val_check_interval=5 trainer.log_every_n_steps=5 data.val_batches=1 data.test_batches=1"
if [ "${SKIP_SMOKE:-0}" != 1 ]; then
  rm -rf "$TMP/smoke"
  RUNS=$TMP/smoke STAGES="oracle clip stylegan animator evaluate" EVAL_FACES=4 \
  EXTRA_ORACLE="trainer.max_steps=10 $S" EXTRA_CLIP="trainer.max_steps=10 $S" \
  EXTRA_STYLEGAN="trainer.max_steps=20 trainer.val_check_interval=10 data.val_batches=1 data.test_batches=1" \
  EXTRA_ANIMATOR="trainer.max_steps=5 $S" timeout 420 bash scripts/device/train_embedded.sh
  cat "$TMP/smoke/stages"
  for f in "$TMP"/smoke/*.log; do echo "== $f"; grep -E "Error|error|Traceback|img/s|images/s" "$f" | tail -n 5; done
  if grep -q "rc=[^0]" "$TMP/smoke/stages" || ! grep -q "end evaluate rc=0" "$TMP/smoke/stages"; then
    echo "SMOKE FAILED"; for f in "$TMP"/smoke/*.log; do echo "== $f"; tail -n 25 "$f"; done; exit 1
  fi
fi
