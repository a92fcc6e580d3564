#!/usr/bin/env bash
# On the GPU machine: wait (WAIT seconds or until done), report finetune_embedded.sh's progress,
# and bundle its results into $OUT (at most 8 files of <= 16 MiB come back).
# Where the GPU machine is handed back when left idle, the background runs die with it: poll back to
# back (WAIT up to ~540 s per call).
set -u
WAIT=${WAIT:-0}
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_ft}
end=$(( $(date +%s) + WAIT ))
# the stages line that ends the wait, a basic regex (a chained stage may log its own); quoted, since an
# unquoted default loses its backslash and "all done|stop" then never matches
[ -n "${UNTIL:-}" ] || UNTIL='all done\|stop'
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "$UNTIL" "$RUNS/stages" 2>/dev/null; do sleep 5; done
cat "$RUNS/stages" 2>/dev/null
for f in "$RUNS"/*.log; do echo "== $f"; tail -c 300 "$f" | tr '\r' '\n' | grep -v "^$" | tail -n 2; done
[ -n "${OUT:-}" ] || exit 0
[ -f "$RUNS/clip/runs/embedded-clip-robust/clip_synthetic.safetensors" ] &&
  tar cf "$OUT/clip.tar" -C "$RUNS/clip/runs/embedded-clip-robust" $(cd "$RUNS/clip/runs/embedded-clip-robust" && ls clip_synthetic.*)
fid="$RUNS/face_id/runs/embedded-face-id"
[ -f "$fid/face_id_synthetic.safetensors" ] && tar cf "$OUT/face_id.tar" -C "$fid" face_id_synthetic.safetensors face_id_synthetic.json
rdr="$RUNS/identity_reader/runs/embedded-identity-reader"
[ -f "$rdr/identity_reader_synthetic.safetensors" ] &&
  tar cf "$OUT/identity_reader.tar" -C "$rdr" identity_reader_synthetic.safetensors identity_reader_synthetic.json
for d in "$RUNS"/assets_*; do [ -f "$d/animator_synthetic.safetensors" ] && cp "$d/animator_synthetic.safetensors" "$OUT/animator_${d##*assets_}.safetensors"; done
for d in "$RUNS"/*/runs/*/csv; do n=$(basename "$(dirname "$d")"); cp "$d/metrics.csv" "$RUNS/metrics_$n.csv" 2>/dev/null; done
(cd "$RUNS" && tar czf "$OUT/results.tgz" $(ls *.log stages *.json metrics_*.csv 2>/dev/null))
ls -la "$OUT"
