#!/usr/bin/env bash
# `pip install . --no-build-isolation` from a copy of the source tree, offline, into a
# virtual environment that sees the system's torch (Debian's python3-torch), then the module's
# tests against the installed package. Usage: pip_install.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1 work=$2
python=${BATCHCAM_TEST_PYTHON:-/usr/bin/python3}
if ! "$python" -c 'import torch' 2>/dev/null; then
  echo "skipped: $python has no torch (Debian: python3-torch)"
  exit 77
fi
rm -rf "$work"
mkdir -p "$work/src"
# pip builds in the tree it is given: a copy keeps the checkout clean.
tar -C "$src" --exclude=./.git --exclude=./build --exclude='./build-*' --exclude=./runs -cf - . | tar -C "$work/src" -xf -
"$python" -m venv --system-site-packages "$work/venv"
PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_BUILD_PARALLEL_LEVEL=2 \
  "$work/venv/bin/python" -m pip install "$work/src" --no-build-isolation
cd "$src/tests/python"
"$work/venv/bin/python" -c 'import batchcam, os; print("installed batchcam", batchcam.__version__, "at", os.path.dirname(batchcam.__file__))'
"$work/venv/bin/python" -c 'import batchcam, sys; sys.exit(0 if "site-packages" in batchcam.__file__ else 1)'
exec "$work/venv/bin/python" -m unittest test_module
