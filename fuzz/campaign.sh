#!/usr/bin/env bash
# A longer fuzzing campaign (not CI): builds the libFuzzer targets with clang and runs each
# for SECONDS (default 600) on its seed corpus, then prints the executions and whether it
# found anything (a crash leaves crash-* files in OUT).
#   fuzz/campaign.sh BUILD_DIR [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?build directory}
seconds=${2:-600}
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build" > /dev/null
status=0
for target in idx image; do
  corpus="$build/corpus-$target" out="$build/findings-$target"
  mkdir -p "$corpus" "$out"
  seeds="$here/corpus"; [[ $target == image ]] && seeds="$here/corpus-image"
  cp -n "$seeds"/* "$corpus"/
  log="$build/$target.log"
  if "$build/${target}_fuzzer" -max_total_time="$seconds" -print_final_stats=1 -max_len=65536 -rss_limit_mb=2048 -seed=1 \
       -artifact_prefix="$out/" "$corpus" > "$log" 2>&1; then
    result="no finding"
  else
    result="FINDING (see $out and $log)"
    status=1
  fi
  executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  [[ -n $executions ]] || executions=$(grep -o '#[0-9]*' "$log" | tail -n 1 | tr -d '#')
  echo "$target: $executions executions in ${seconds} s, $result"
done
exit $status
