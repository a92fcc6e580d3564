#!/usr/bin/env bash
# Train the embedded default on one GPU, stage by stage, into $RUNS (default $TMPDIR/lgfa_runs, TMPDIR
# defaulting to /tmp).
# Started in the background on the GPU machine: setsid bash scripts/device/train_embedded.sh &
# Stages: oracle + clip (concurrently with) stylegan, then the animator on the new G and CLIP,
# then the evaluation. `cat $RUNS/stages` shows progress; every stage's log is $RUNS/<stage>.log.
# STAGES="oracle clip stylegan animator evaluate" selects stages; EXTRA_<STAGE> adds overrides.
set -u
cd "$(dirname "$0")/../.."
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_runs}
STAGES=${STAGES:-"oracle clip stylegan animator evaluate"}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1
common="paths.log_dir=$RUNS hardware=${HW:-gpu} logger=csv"

has() { [[ " $STAGES " == *" $1 "* ]]; }
stage() {
  local name=$1; shift
  echo "start $name $(date +%s)" >> "$RUNS/stages"
  python train.py "$@" $common > "$RUNS/$name.log" 2>&1
  echo "end $name rc=$? $(date +%s)" >> "$RUNS/stages"
}
G=${G:-$RUNS/stylegan/runs/embedded-stylegan/stylegan2_synthetic128.safetensors}
C=${C:-$RUNS/clip/runs/embedded-clip/clip_synthetic.safetensors}
O=${O:-$RUNS/oracle/runs/embedded-oracle/oracle_synthetic.safetensors}

has oracle && stage oracle experiment=embedded_oracle ${EXTRA_ORACLE:-} &
has clip && stage clip experiment=embedded_clip ${EXTRA_CLIP:-} &
has stylegan && stage stylegan experiment=embedded_stylegan ${EXTRA_STYLEGAN:-}
wait
if has animator; then
  stage animator experiment=embedded_animator domain.generator.checkpoint="$G" \
    domain.clip.checkpoint="$C" domain.loss_clip.checkpoint="$C" model.validation.identity_metric_path="$O" ${EXTRA_ANIMATOR:-}
fi
if has evaluate; then
  A=$RUNS/animator/runs/embedded-animator
  echo "start evaluate $(date +%s)" >> "$RUNS/stages"
  python scripts/export_embedded.py --animator-ckpt "$A/checkpoints/last.ckpt" --generator "$G" --clip "$C" \
    --oracle "$O" --out "$RUNS/assets" > "$RUNS/export.log" 2>&1 &&
  { python scripts/fit_text_adapter.py --animator "$RUNS/assets/animator_synthetic.safetensors" >> "$RUNS/export.log" 2>&1 ||
    echo "no text adapter fitted (MiniLM or the full text cache is needed): see export.log"; } &&
  python evaluate.py checkpoint="$RUNS/assets/animator_synthetic.safetensors" faces=${EVAL_FACES:-200} \
    oracle="$RUNS/assets/oracle_synthetic.safetensors" device=${EVAL_DEVICE:-cuda} output="$RUNS/eval.json" > "$RUNS/evaluate.log" 2>&1
  echo "end evaluate rc=$? $(date +%s)" >> "$RUNS/stages"
fi
echo "all done $(date +%s)" >> "$RUNS/stages"
