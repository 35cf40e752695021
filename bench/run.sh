#!/bin/sh
# Kiln's CPU benchmark in one command (see bench/README.md):
#   bench/run.sh            peak, OpenBLAS, kiln GEMM, Qwen-Image DiT block
# Builds kiln_bench in build-bench/, writes the 1-block random-weight DiT to
# $KN_BENCH_DIR (default /tmp/kiln-bench) the first time, then runs.
# Env: KN_BENCH_DIR, KN_BENCH_REPS (runs per median, default 3),
#      KN_BENCH_PYTHON (a python3 with numpy, default /usr/bin/python3).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
# OpenBLAS picks its kernels by core type; keep the caller's choice, default Haswell (AVX2).
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-Haswell}"

build_targets kiln_bench

model="$dir/qwen_image_dit_1block_bf16.safetensors"
if [ ! -f "$model" ]; then
    mkdir -p "$dir"
    echo "writing $model (0.76 GB, about a minute)..."
    "$python" "$shared/bench/make_model.py" "$shared/bench/manifests/qwen_image_dit.json" "$model.tmp" \
        --blocks 1 --dtype bf16 --seed 1 >/dev/null
    mv "$model.tmp" "$model"
fi
exec "$build/bench/kiln_bench" "$model"
