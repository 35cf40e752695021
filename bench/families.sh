#!/bin/sh
# Every family Kiln runs, timed on full-width random-weight files from
# shared/bench (see bench/README.md):
#   bench/families.sh [SIZE]     DiT steps at SIZE x SIZE (default 1024), text encoders, VAE decodes
# For each DiT two depths are generated; the step time of the deeper file
# minus the shallower one's is the time of the blocks between them, and
# fixed + N_real x per-block is the full model's step. Files are written once
# to $KN_BENCH_DIR (default /tmp/kiln-bench; about 9 GB in all).
# Env: KN_BENCH_DIR, KN_BENCH_REPS, KN_BENCH_PYTHON, KN_SHARED (as bench/run.sh).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
size=${1:-1024}

build_targets model_bench
bench="$build/bench/model_bench"

# step NAME MANIFEST BLOCKS1 BLOCKS2 (BLOCKS as make_model.py's --blocks)
step() {
    a=$(make "$1_$3" "$2" "$3" --dtype bf16 | tail -1)
    b=$(make "$1_$4" "$2" "$4" --dtype bf16 | tail -1)
    echo "== $1: DiT step at ${size}x${size}, blocks $3 and $4"
    "$bench" dit "$a" "$size"
    "$bench" dit "$b" "$size"
}

step qwen_image qwen_image_dit 1 2
step flux_dev flux1_dev_dit 1,1 2,2
step z_image zimage_turbo_dit 1 2

echo "== text encoders (full width, 2 layers)"
"$bench" text qwen_image "$(make qwen25_vl_2l qwen25_vl_7b_text 2 --dtype bf16 | tail -1)"
"$bench" text lumina2 "$(make qwen3_4b_2l qwen3_4b_text 2 --dtype bf16 | tail -1)"
"$bench" text flux "$(make clip_l_2l clip_l_text 2 | tail -1)" "$(make t5_xxl_2l t5_xxl_encoder 2 | tail -1)"

echo "== Qwen2.5-VL vision tower (full width, all 32 blocks) on a ~1 Mpx edit image"
vision=$(out="$dir/qwen25_vl_vision.safetensors" &&
    if [ ! -f "$out" ]; then "$python" "$shared/bench/make_model.py" "$root/bench/manifests/qwen25_vl_7b_vision.json" \
        "$out.tmp" --seed 1 >/dev/null && mv "$out.tmp" "$out"; fi && echo "$out")
"$bench" vision "$vision" 1182 887

echo "== VAE decode at ${size}x${size}"
"$bench" vae "$(make wan21_vae wan21_vae all --dtype bf16 | tail -1)" "$size"
"$bench" vae "$(make flux_vae flux_vae all | tail -1)" "$size"
