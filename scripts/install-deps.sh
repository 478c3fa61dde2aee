#!/usr/bin/env bash
# Installs, with apt-get, the Debian 12 packages batchcam needs to build and test, and only
# those that are missing. Run as root (or with sudo). Nothing is downloaded at build time.
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config
  libtorch-dev            # LibTorch 1.13 (CPU)
  libcli11-dev            # command line and config files
  nlohmann-json3-dev      # JSON: configs, metrics, checkpoint metadata
  libspdlog-dev           # CLI logging
  libpng-dev zlib1g-dev   # images and compression
  libgtest-dev libgmock-dev libbenchmark-dev
)

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
