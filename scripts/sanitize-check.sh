#!/usr/bin/env bash
# Builds batchcam with AddressSanitizer and UndefinedBehaviorSanitizer (-DBATCHCAM_SANITIZE=ON)
# and runs the test suite under them (all but the benchmarks and the CUDA tests). Not part of
# CI: the build and the run take about half an hour on 2 cores.
#   scripts/sanitize-check.sh [BUILD_DIR]      (default: build-sanitize)
# LeakSanitizer is off: LibTorch keeps global allocations until exit by design.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-sanitize}
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBATCHCAM_SANITIZE=ON \
  -DBATCHCAM_BUILD_TESTS=ON -DBATCHCAM_BUILD_BENCHMARKS=OFF
cmake --build "$build" --parallel "$(nproc)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
cd "$build"
ctest --parallel "$(nproc)" --output-on-failure --timeout 1800 -LE "bench|cuda"
