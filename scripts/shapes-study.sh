#!/usr/bin/env bash
# The shapes study of docs/results-shapes.md: SimpleCNN on shapes, CE only against the
# Batch-CAM losses with each distance, over several seeds. Regenerates the table:
#   scripts/shapes-study.sh [SEEDS...]        (default seeds: 0 1 2)
# Uses build/batchcam (scripts/dev build) and python3 (standard library only) for the table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$root/build/batchcam
out=$root/runs/study-shapes
seeds=("${@:-0 1 2}")
read -r -a seeds <<< "${seeds[*]}"
mkdir -p "$out"

run() {  # name seed flags...
  local name=$1 seed=$2
  shift 2
  [[ -f $out/$name-s$seed/last.pt ]] && return 0
  rm -rf "$out/$name-s$seed"
  echo "study: $name seed $seed"
  "$bin" train --quiet --seed "$seed" --out-dir "$out" --run-name "$name-s$seed" "$@" > /dev/null
}

for seed in "${seeds[@]}"; do
  run ce "$seed" --lambda-proto 0 --lambda-batch 0
  for d in l1 l2 ssim; do
    run proto-$d "$seed" --lambda-proto 1 --lambda-batch 0 --distance "$d"
    run batch-$d "$seed" --lambda-proto 0 --lambda-batch 1 --distance "$d"
    run both-$d "$seed" --lambda-proto 1 --lambda-batch 1 --distance "$d"
  done
done
python3 "$root/scripts/study_table.py" "$out" "scripts/shapes-study.sh ${seeds[*]}" > "$root/docs/results-shapes.md"
echo "study: wrote docs/results-shapes.md"
