#!/usr/bin/env bash
# A longer fuzzing campaign (not CI): builds the libFuzzer targets with clang and runs each
# for SECONDS (default 600) on its seed corpus, then prints the executions and whether it
# found anything (a crash leaves crash-* files in BUILD_DIR/findings-TARGET).
#   fuzz/campaign.sh BUILD_DIR [SECONDS] [TARGETS]     (TARGETS default: "idx image checkpoint")
# The IDX and image targets build alone in a minute; the checkpoint target needs the whole
# library built with clang and the sanitizers (BUILD_DIR/checkpoint, about 15 minutes on 2 cores).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?build directory}
seconds=${2:-600}
targets=${3:-idx image checkpoint}
mkdir -p "$build"
build=$(cd "$build" && pwd)
status=0
for target in $targets; do
  corpus="$build/corpus-$target" out="$build/findings-$target"
  mkdir -p "$corpus" "$out"
  case $target in
    idx|image)
      cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
      cmake --build "$build" --target "${target}_fuzzer" > /dev/null
      fuzzer="$build/${target}_fuzzer" max_len=65536
      seeds="$here/corpus"; [[ $target == image ]] && seeds="$here/corpus-image"
      cp -n "$seeds"/* "$corpus"/ ;;
    checkpoint)
      cmake -S "$here/.." -B "$build/checkpoint" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DBATCHCAM_FUZZ=ON -DBATCHCAM_BUILD_TESTS=OFF -DBATCHCAM_BUILD_BENCHMARKS=OFF > /dev/null
      cmake --build "$build/checkpoint" --target checkpoint_fuzzer checkpoint_seeds > /dev/null
      fuzzer="$build/checkpoint/checkpoint_fuzzer" max_len=4194304
      ASAN_OPTIONS=detect_leaks=0 "$build/checkpoint/checkpoint_seeds" "$corpus" ;;
    *) echo "unknown target $target (idx, image or checkpoint)" >&2; exit 2 ;;
  esac
  log="$build/$target.log"
  # LeakSanitizer is off for the checkpoint target: LibTorch keeps global allocations until exit.
  if ASAN_OPTIONS=detect_leaks=$([[ $target == checkpoint ]] && echo 0 || echo 1) \
     "$fuzzer" -max_total_time="$seconds" -print_final_stats=1 -max_len="$max_len" -rss_limit_mb=4096 -seed=1 \
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
