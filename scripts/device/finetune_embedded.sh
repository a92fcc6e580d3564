#!/usr/bin/env bash
# On one GPU, in the background (setsid): the second half of the embedded-default pipeline.
#   1. quiet-GPU benchmarks (generator 1024 px, ops) and the GPU test suite
#   2. adversarial fine-tuning of the shipped CLIP (experiment=embedded_clip_robust)
#   3. with TRAIN_FACE_ID=1: the face recogniser of the identity loss (experiment=embedded_face_id),
#      else FID= an existing one (optional); with TRAIN_ID_READER=1: the identity-attribute reader
#      (experiment=embedded_identity_reader, READER_MIN minutes), else READER= an existing one; a
#      reader makes it the identity-loss network (domain.identity_loss.kind=attributes)
#   4. animator variants trained side by side on the shipped generator and the new CLIP (with FID
#      the identity-loss network is configured; a variant turns the loss on with loss.identity=W)
#      (INIT= an animator export or checkpoint: every variant fine-tunes from it, model.train.init_checkpoint;
#      EXPERIMENT= the recipe the variants override, default embedded_animator)
#   5. export + evaluation of every variant (200 faces x every prompt, with the oracle; EVAL_STRENGTHS
#      lists inference strengths, default 1.0; EVAL_PROJECTIONS lists identity-projection amounts > 0
#      evaluated too at strength 1, with READER or else the shipped reader; EVAL_CONFIRM_OFFSET=F: each
#      projection again on the faces of seeds F.. (other test faces than the default 10000..), to confirm
#      a setting chosen on the default faces)
# Progress: $RUNS/stages; logs: $RUNS/*.log. Variants: ANIM_VARIANTS="name=overrides;name=overrides".
# LPIPS weights: LGFA_LPIPS_DIR (default .carry/lpips in the repository). Where the copy of the working
# tree sent to the GPU machine must stay small, store them in fp16 (4.8 MB), made once with
#   python -c "from safetensors.torch import load_file, save_file; sd = load_file('A'); save_file({k: v.half().contiguous() for k, v in sd.items()}, 'B')"
# and point LGFA_LPIPS_DIR at B's folder.
set -u
cd "$(dirname "$0")/../.."
# Lightning wants DD:HH:MM:SS with two-digit fields ("6" is refused at start-up)
minutes() { local m=$((10#$1)); printf "00:%02d:%02d:00" $((m / 60)) $((m % 60)); }
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_ft}
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 LGFA_LPIPS_DIR=${LGFA_LPIPS_DIR:-$PWD/.carry/lpips}
log() { echo "$* $(date +%s)" >> "$RUNS/stages"; }
G=${G:-assets/stylegan2_synthetic128.safetensors}
O=${O:-assets/oracle_synthetic.safetensors}
common="paths.log_dir=$RUNS hardware=gpu logger=csv"

if [ "${SKIP_BENCH:-0}" != 1 ]; then
  log start bench
  timeout 200 python bench/bench_generator.py --res 1024 --batch 16 --no-ref --cudnn-benchmark > "$RUNS/bench_generator.log" 2>&1
  [ "${BENCH_OPS:-0}" = 1 ] && timeout 150 python bench/bench_ops.py > "$RUNS/bench_ops.log" 2>&1
  log end bench
fi
if [ -z "${C:-}" ]; then  # no CLIP given: fine-tune the shipped one adversarially first
  log start clip
  python train.py experiment=embedded_clip_robust +trainer.max_time=$(minutes ${CLIP_MIN:-4}) $common > "$RUNS/clip.log" 2>&1 &
  clip_pid=$!
  [ "${SKIP_TESTS:-0}" = 1 ] || timeout 400 python -m pytest -m gpu -q -p no:cacheprovider tests/ > "$RUNS/gpu_tests.log" 2>&1
  wait $clip_pid
  log end clip rc=$?
  C=$RUNS/clip/runs/embedded-clip-robust/clip_synthetic.safetensors
fi
[ -f "$C" ] || { log "no CLIP export: stop"; exit 1; }
if [ "${TRAIN_FACE_ID:-0}" = 1 ]; then
  log start face_id
  python train.py experiment=embedded_face_id +trainer.max_time=$(minutes ${FID_MIN:-5}) $common > "$RUNS/face_id.log" 2>&1
  log end face_id rc=$?
  FID=$RUNS/face_id/runs/embedded-face-id/face_id_synthetic.safetensors
  [ -f "$FID" ] || { log "no face-id export: stop"; exit 1; }
fi
if [ "${TRAIN_ID_READER:-0}" = 1 ]; then
  log start identity_reader
  python train.py experiment=embedded_identity_reader +trainer.max_time=$(minutes ${READER_MIN:-4}) $common > "$RUNS/identity_reader.log" 2>&1
  log end identity_reader rc=$?
  READER=$RUNS/identity_reader/runs/embedded-identity-reader/identity_reader_synthetic.safetensors
  [ -f "$READER" ] || { log "no identity-reader export: stop"; exit 1; }
fi
id_overrides=""; id_export=""
if [ -n "${READER:-}" ]; then
  id_overrides="domain.identity_loss.kind=attributes domain.identity_loss.checkpoint=$READER"; id_export="--identity-reader $READER"
elif [ -n "${FID:-}" ]; then
  id_overrides="domain.identity_loss.kind=synthetic domain.identity_loss.checkpoint=$FID"; id_export="--face-id $FID"
fi

IFS=';' read -ra variants <<< "${ANIM_VARIANTS:-views=model.train.clip_views=4 model.train.clip_view_noise=0.03}"
for v in "${variants[@]}"; do
  name=${v%%=*}; overrides=${v#*=}
  log start animator_$name
  python train.py experiment=${EXPERIMENT:-embedded_animator} name=anim-$name domain.generator.checkpoint="$G" \
    domain.clip.checkpoint="$C" domain.loss_clip.checkpoint="$C" model.validation.identity_metric_path="$O" \
    model.validation.video_every_n_steps=0 ${INIT:+model.train.init_checkpoint=$INIT} +trainer.max_time=$(minutes ${ANIM_MIN:-8}) $id_overrides $overrides $common \
    > "$RUNS/animator_$name.log" 2>&1 &
done
wait
log end animators
for v in "${variants[@]}"; do
  name=${v%%=*}
  A=$RUNS/animator/runs/anim-$name
  ( python scripts/export_embedded.py --animator-ckpt "$A/checkpoints/last.ckpt" --generator "$G" --clip "$C" \
      --oracle "$O" $id_export --out "$RUNS/assets_$name" > "$RUNS/export_$name.log" 2>&1 &&
    { python scripts/fit_text_adapter.py --animator "$RUNS/assets_$name/animator_synthetic.safetensors" \
        >> "$RUNS/export_$name.log" 2>&1 || echo "$name: no text adapter fitted: see export_$name.log"; } &&
    for s in ${EVAL_STRENGTHS:-1.0}; do
      python evaluate.py checkpoint="$RUNS/assets_$name/animator_synthetic.safetensors" faces=${EVAL_FACES:-200} \
        strength=$s oracle="$RUNS/assets_$name/oracle_synthetic.safetensors" device=cuda \
        output="$RUNS/eval_${name}_s$s.json" > "$RUNS/evaluate_${name}_s$s.log" 2>&1; log end evaluate_${name}_s$s rc=$?
    done
    for p in ${EVAL_PROJECTIONS:-}; do
      for f in default ${EVAL_CONFIRM_OFFSET:-}; do  # the default faces, then other test faces (seeds f..)
        tag=p$p; [ "$f" = default ] || tag=p${p}_f$f
        python evaluate.py checkpoint="$RUNS/assets_$name/animator_synthetic.safetensors" faces=${EVAL_FACES:-200} \
          identity_projection=$p projection_reader="${READER:-assets/identity_reader_synthetic.safetensors}" \
          $([ "$f" = default ] || echo face_seed_offset=$f) oracle="$RUNS/assets_$name/oracle_synthetic.safetensors" \
          device=cuda output="$RUNS/eval_${name}_$tag.json" > "$RUNS/evaluate_${name}_$tag.log" 2>&1
        log end evaluate_${name}_$tag rc=$?
      done
    done ) &
done
wait
log all done
