#!/usr/bin/env bash
# On the GPU machine: wait, then report the pipeline's progress and copy results to $OUT.
set -u
WAIT=${WAIT:-0}
RUNS=${RUNS:-${TMPDIR:-/tmp}/lgfa_runs}
end=$(( $(date +%s) + WAIT ))
while [ "$(date +%s)" -lt "$end" ] && ! grep -q "all done" "$RUNS/stages" 2>/dev/null; do sleep 10; done
cat "$RUNS/stages" 2>/dev/null
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
for f in "$RUNS"/*.log; do echo "== $f"; grep -aE "Error|Traceback|img/s|kimg" "$f" | tail -n 3; tail -c 600 "$f" | tr '\r' '\n' | tail -n 4; done
[ -n "${OUT:-}" ] || exit 0
# at most 8 files of <= 16 MiB come back: bundle by size
bundle() { local out=$1 dir=$2 pat=$3; [ -d "$dir" ] && ls "$dir"/$pat >/dev/null 2>&1 && tar cf "$OUT/$out" -C "$dir" $(cd "$dir" && ls $pat); }
bundle generator.tar "$RUNS/stylegan/runs/embedded-stylegan" "stylegan2_synthetic128.*"
bundle clip.tar "$RUNS/clip/runs/embedded-clip" "clip_synthetic.*"
bundle oracle.tar "$RUNS/oracle/runs/embedded-oracle" "oracle_synthetic.*"
bundle animator.tar "$RUNS/assets" "animator_*"
for stage in oracle clip stylegan animator; do
  d="$RUNS/$stage/runs/embedded-$stage"
  [ -f "$d/csv/metrics.csv" ] && cp "$d/csv/metrics.csv" "$RUNS/${stage}_metrics.csv"
done
(cd "$RUNS" && tar czf "$OUT/results.tgz" $(ls *.log stages eval.json *_metrics.csv 2>/dev/null))
ls -la "$OUT"
