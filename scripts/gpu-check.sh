#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and PyTorch installed (a wheel with CUDA),
# builds batchcam against that PyTorch's LibTorch, runs the tests labelled `cuda`, a short
# MNIST run in bf16 and the benchmark on the GPU.
#
#   scripts/gpu-check.sh [BUILD_DIR]        (default: build-gpu)
#
# Environment: PYTHON (default python3, the interpreter with torch), MNIST_DIR (default
# ../shared/data/mnist; the MNIST run is skipped when absent), OUT (default BUILD_DIR/gpu-check:
# logs, bench JSON and the run directory). Needs what `scripts/install-deps.sh` installs except
# libtorch-dev; the wheel's LibTorch must use the C++11 ABI like Debian's libraries (PyTorch
# wheels do from 2.7 on: torch.compiled_with_cxx11_abi()). Exit status 0 when all passed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-gpu}
python=${PYTHON:-python3}
out=${OUT:-$build/gpu-check}
mnist=${MNIST_DIR:-$root/../shared/data/mnist}
mkdir -p "$out"

"$python" - <<'PY' | tee "$out/torch.txt"
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cxx11 ABI", torch.compiled_with_cxx11_abi())
print("devices", [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
PY
torch_dir=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "share", "cmake", "Torch"))')

# The Python module too (its CUDA test, python_module_cuda) where Python's headers are installed.
python_module=$("$python" -c 'import os, sysconfig; print("ON" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "OFF")')
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTorch_DIR="$torch_dir" \
  -DBATCHCAM_BUILD_TESTS=ON -DBATCHCAM_BUILD_BENCHMARKS=OFF \
  -DBATCHCAM_BUILD_PYTHON="$python_module" -DPython3_EXECUTABLE="$(command -v "$python")"
cmake --build "$build" --parallel "$(nproc)"

"$build/batchcam" env | tee "$out/env.txt"
(cd "$build" && ctest -L cuda --output-on-failure --timeout 900) 2>&1 | tee "$out/ctest-cuda.txt"

if [[ -f $mnist/train-images-idx3-ubyte.gz || -f $mnist/train-images-idx3-ubyte ]]; then
  rm -rf "$out/runs/mnist-bf16"
  "$build/batchcam" train --device cuda --precision bf16 --dataset mnist --data-dir "$mnist" --epochs 1 \
    --out-dir "$out/runs" --run-name mnist-bf16 2>&1 | tee "$out/train-mnist-bf16.txt"
else
  echo "gpu-check: $mnist has no MNIST files; the MNIST run is skipped" | tee "$out/train-mnist-bf16.txt"
fi

for precision in fp32 bf16 fp16; do
  "$build/batchcam" bench --device cuda --precision "$precision" --repetitions 5 --warmup 2 --no-memory \
    --json "$out/bench-cuda-$precision.json" 2>&1 | tee "$out/bench-cuda-$precision.txt"
done
echo "gpu-check: passed; results in $out"
