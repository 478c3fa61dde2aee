#!/usr/bin/env bash
# Installs, with apt-get, the Debian 12 packages batchcam needs to build, and only those
# that are missing. With --test also the packages of the test suite's reference checks
# (PyTorch and torchvision for Python, to compare exported weights with torchvision) and
# clang with libFuzzer for the fuzzer's smoke run.
# Run as root (or with sudo). Nothing is downloaded at build time.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libopenblas0-openmp     # optimised BLAS for LibTorch's matrix products (Debian's default is the reference BLAS)
  libcli11-dev            # command line and config files
  nlohmann-json3-dev      # JSON: configs, metrics, checkpoint metadata
  libspdlog-dev           # CLI logging
  libpng-dev zlib1g-dev   # images and compression
  libjpeg62-turbo-dev     # JPEG images in image-folder datasets
  libgloo-dev             # the headers of c10d's Gloo process group (distributed training)
  libcurl4-openssl-dev    # downloading MNIST / Fashion-MNIST when missing
  libcairo2-dev           # plots in the HTML report
  libgtest-dev libgmock-dev libbenchmark-dev
)
if [[ ${1:-} == --test ]]; then
  packages+=(python3                   # scripts/study.py and its test (standard library only)
             python3-torch python3-torchvision
             python3-dev pybind11-dev python3-setuptools python3-pip python3-venv  # the Python module, built and pip-installed
             clang libclang-rt-14-dev   # libFuzzer smoke run of the IDX parser
             chromium                   # opens the HTML report headless in a test
             iproute2)                  # ip netns: the two-host distributed test
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
