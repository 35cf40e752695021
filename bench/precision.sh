#!/bin/sh
# BF16 against FP32 compute precision on this CPU, per family, in one run:
#   bench/precision.sh [SIZE]     DiT per-block step time at SIZE x SIZE (default 1024) and
#                                 text-encoder time, each precision run in turn, KN_BENCH_REPS each
# A block's time is the step time of the 2-block file minus the 1-block
# file's (the files families.sh writes). On a CPU with AVX512_BF16, BF16 runs
# bf16 pairs on vdpbf16ps (kernels/cpu/gemm.c); elsewhere it multiplies the
# same rounded values in f32 and is expected to be slower than FP32.
# Env: KN_BENCH_DIR, KN_BENCH_REPS, KN_BENCH_PYTHON, KN_SHARED (as bench/run.sh).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
size=${1:-1024}
grep -m1 'model name' /proc/cpuinfo
echo "bf16 dot product: $(grep -q avx512_bf16 /proc/cpuinfo && echo 'avx512_bf16' || echo 'none (BF16 emulated)')"

build_targets model_bench
bench="$build/bench/model_bench"

# seconds PRECISION ARGS...: the median time model_bench prints
seconds() {
    p=$1
    shift
    KN_BENCH_PRECISION=$p "$bench" "$@" | awk '/ s \(best/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "s") { print $i; exit } }'
}

# dit NAME MANIFEST BLOCKS1 BLOCKS2 (BLOCKS as make_model.py's --blocks)
dit() {
    a=$(make "$1_$3" "$2" "$3" --dtype bf16 | tail -1)
    b=$(make "$1_$4" "$2" "$4" --dtype bf16 | tail -1)
    f1=$(seconds fp32 dit "$a" "$size") b1=$(seconds bf16 dit "$a" "$size")
    f2=$(seconds fp32 dit "$b" "$size") b2=$(seconds bf16 dit "$b" "$size")
    awk -v n="$1" -v f1="$f1" -v f2="$f2" -v b1="$b1" -v b2="$b2" -v s="$size" 'BEGIN {
        printf "%-12s DiT block %sx%s: fp32 %.3f s, bf16 %.3f s: bf16 %.2fx faster (steps: fp32 %.3f/%.3f, bf16 %.3f/%.3f)\n",
            n, s, s, f2 - f1, b2 - b1, (f2 - f1) / (b2 - b1), f1, f2, b1, b2 }'
}

# text NAME TYPE FILE...
text() {
    n=$1
    shift
    f=$(seconds fp32 text "$@") b=$(seconds bf16 text "$@")
    awk -v n="$n" -v f="$f" -v b="$b" 'BEGIN {
        printf "%-12s text encoder (2 layers): fp32 %.3f s, bf16 %.3f s: bf16 %.2fx faster\n", n, f, b, f / b }'
}

dit qwen_image qwen_image_dit 1 2
dit flux_dev flux1_dev_dit 1,1 2,2
dit z_image zimage_turbo_dit 1 2
text qwen25_vl qwen_image "$(make qwen25_vl_2l qwen25_vl_7b_text 2 --dtype bf16 | tail -1)"
text qwen3_4b lumina2 "$(make qwen3_4b_2l qwen3_4b_text 2 --dtype bf16 | tail -1)"
text clip_t5 flux "$(make clip_l_2l clip_l_text 2 | tail -1)" "$(make t5_xxl_2l t5_xxl_encoder 2 | tail -1)"
