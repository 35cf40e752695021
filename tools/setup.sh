#!/usr/bin/env bash
# One-time set-up on Debian 12: install the build's packages (as root or with
# sudo) and build Kiln into build/. CI (.ci/run) uses the same package list.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake make gcc libc6-dev pkg-config clang libclang-rt-14-dev libomp-14-dev llvm
          libjansson-dev libopenblas-dev libpng-dev libstb-dev python3-numpy
          libcivetweb-dev python3-websocket chromium nodejs
          libopenmpi-dev openmpi-bin iproute2)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm comes with NodeSource's nodejs and separately with Debian's.
if ! command -v npm >/dev/null 2>&1; then
  ${sudo_cmd:-$([ "$(id -u)" -eq 0 ] || echo sudo)} apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
# The graph editor's library (@comfyorg/litegraph, served from web/node_modules)
# and what the browser and client tests drive (puppeteer-core, comfy-ui-client,
# @saintno/comfyui-sdk), pinned by web/package-lock.json.
(cd web && npm ci --no-audit --no-fund --loglevel=error)
# The CUDA backend compiles whenever nvcc is there, GPU or not.
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
cmake -S . -B build >/dev/null
cmake --build build -j"$(nproc)"
