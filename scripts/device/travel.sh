#!/usr/bin/env bash
# What a device run sends: the checkout's working tree (tracked and untracked-not-ignored files) plus
# the carried paths, 64 MiB in all. The embedded assets alone are ~51 MiB, so a run that carries a
# large state (a GAN chunk's 56.8 MiB, a text cache) needs a checkout of the code alone; the training
# state kept in runs/ (docs/results/gan_training.md, "Training in chunks") never travels with the assets.
#   bash scripts/device/travel.sh size [CARRY...]   MiB that would travel now, with these carried paths
#   bash scripts/device/travel.sh code [PATH...]    sparse checkout: entry points, src/, conf/, scripts/,
#                                                   bench/ and the extra PATHs (e.g. runs/embedded_stylegan)
#   bash scripts/device/travel.sh all               the whole checkout but runs/ (what every other run needs)
# Run it from the checkout the device sends, with no edits in flight: `code` hides assets/, docs/ and
# tests/ from the working tree (git keeps them; `all` brings them back).
set -eu
cd "$(dirname "$0")/../.."
LIMIT=$((64 * 1024 * 1024))

size() {
  local bytes
  bytes=$({ git ls-files -z; git ls-files -z --others --exclude-standard; } \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
    | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  for c in "$@"; do
    [ -e "$c" ] && bytes=$((bytes + $(du -sb "$c" | cut -f1)))
  done
  awk -v b="$bytes" -v l="$LIMIT" 'BEGIN { printf "%.1f MiB of %.0f MiB would travel (%.1f MiB left)\n", b / 1048576, l / 1048576, (l - b) / 1048576; exit (b > l) }'
}

case "${1:-size}" in
  size) shift || true; size "$@" ;;
  code)
    shift
    git sparse-checkout set --no-cone '/*.py' '/*.txt' '/*.ini' '/*.md' '/src/' '/conf/' '/scripts/' '/bench/' "$@"
    size || true ;;
  all)
    git sparse-checkout set --no-cone '/*' '!/runs/'
    size || true ;;
  *) echo "usage: bash scripts/device/travel.sh size [CARRY...] | code [PATH...] | all" >&2; exit 2 ;;
esac
