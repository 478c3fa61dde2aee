#!/usr/bin/env bash
# The CMake package from a user's side (tests/CMakeLists.txt runs both modes):
#   run.sh install BUILD_DIR WORK_DIR   installs BUILD_DIR to WORK_DIR/prefix, then builds and
#                                       runs consumer/ with find_package(batchcam)
#   run.sh subdirectory SOURCE_DIR WORK_DIR
#                                       builds and runs subdirectory/ (add_subdirectory, the
#                                       minimal configuration)
# Each builds and runs `consumer` (batchcam::core) and `consumer_full` (batchcam::batchcam).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mode=$1 from=$2 work=$3
rm -rf "$work"
mkdir -p "$work"
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
case "$mode" in
  install)
    cmake --install "$from" --prefix "$work/prefix" >"$work/install.log"
    test -f "$work/prefix/lib/cmake/batchcam/batchcamConfig.cmake"
    test -f "$work/prefix/lib/cmake/batchcam/batchcamConfigVersion.cmake"
    test -f "$work/prefix/include/batchcam/cam/grad_cam.h"
    # The core component alone, with the full library's dependencies made unfindable.
    cmake -S "$here/consumer" -B "$work/core" "${generator[@]}" -DCMAKE_PREFIX_PATH="$work/prefix" -DCORE_ONLY=ON \
          -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON -DCMAKE_DISABLE_FIND_PACKAGE_PNG=ON \
          -DCMAKE_DISABLE_FIND_PACKAGE_ZLIB=ON -DCMAKE_DISABLE_FIND_PACKAGE_JPEG=ON \
          -DCMAKE_DISABLE_FIND_PACKAGE_CURL=ON -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON
    cmake --build "$work/core" --parallel 2
    "$work/core/consumer"
    cmake -S "$here/consumer" -B "$work/build" "${generator[@]}" -DCMAKE_PREFIX_PATH="$work/prefix"
    ;;
  subdirectory)
    cmake -S "$here/subdirectory" -B "$work/build" "${generator[@]}" -DBATCHCAM_SOURCE_DIR="$from"
    ;;
  *)
    echo "run.sh: mode must be install or subdirectory, got '$mode'" >&2
    exit 2
    ;;
esac
cmake --build "$work/build" --parallel 2
"$work/build/consumer"
"$work/build/consumer_full"
