# Sourced by the chunk scripts (gan_chunk.sh, train_chunk.sh):
#   timed_train SECONDS LOG python train.py ...
# runs the command in the background with its output in LOG and sends it SIGTERM after SECONDS: the
# run ends the step it is in, saves it as last.ckpt and exits 143 (src/systems/signals.py); a run that
# reaches max_steps first exits 0. Sets rc (the command's exit status) and train_s (seconds it ran);
# prints LOG's last lines, and its last 30 with "training failed" when rc is neither 0 nor 143.
timed_train() {
  local seconds=$1 log=$2 pid timer t0
  shift 2
  "$@" > "$log" 2>&1 &
  pid=$!
  t0=$(date +%s)
  ( sleep "$seconds"; kill -TERM $pid 2>/dev/null ) &
  timer=$!
  wait $pid
  rc=$?
  train_s=$(($(date +%s) - t0))
  kill $timer 2>/dev/null
  tail -n 3 "$log"
  if [ $rc -ne 0 ] && [ $rc -ne 143 ]; then
    echo "training failed (rc=$rc)"
    tail -n 30 "$log"
  fi
}
