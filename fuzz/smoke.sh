#!/usr/bin/env bash
# Builds the IDX fuzzer with clang and runs it for a fixed number of inputs (default
# 20000, enough to keep it from rotting; pass another count for a real campaign).
#   fuzz/smoke.sh BUILD_DIR [RUNS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?build directory}
runs=${2:-20000}
cmake -S "$here" -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$build" --target idx_fuzzer > /dev/null
corpus="$build/corpus"
mkdir -p "$corpus"
cp -n "$here"/corpus/* "$corpus"/
"$build/idx_fuzzer" -runs="$runs" -max_len=4096 -seed=1 "$corpus" 2>&1 | tail -n 2
