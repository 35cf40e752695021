#!/bin/sh
# Kiln against stable-diffusion.cpp on the same full-width, reduced-depth
# random-weight files (bench/README.md):
#   bench/compare_sdcpp.sh FAMILY [SIZE...]     FAMILY: qwen_image, flux or zimage; SIZE default 512
# Builds kiln and model_bench in build-bench/, builds or finds the peer outside
# the checkout (bench/sdcpp_peer.sh), writes the files both load (bench/models.sh:
# the DiT at two depths, the text encoders at 2 layers, the whole VAE), measures
# the fp32 FMA peak, then runs both, interleaved and repeated
# (bench/compare_sdcpp.py), and prints one table per size.
# Env: KN_BENCH_REPS (runs per side and depth, default 2), KN_BENCH_STEPS
# (default 3), KN_PRECISION (Kiln's --precision, default fp32), and those of
# bench/models.sh and bench/sdcpp_peer.sh.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/bench/models.sh"
family=${1:?usage: bench/compare_sdcpp.sh qwen_image|flux|zimage [SIZE...]}
shift
[ $# -gt 0 ] || set -- 512

build_targets kiln model_bench
sdcpp=$("$root/bench/sdcpp_peer.sh" | tail -1)

case $family in
qwen_image)
    make qwen_image_1 qwen_image_dit 1 --dtype bf16 >/dev/null
    make qwen_image_2 qwen_image_dit 2 --dtype bf16 >/dev/null
    make qwen25_vl_2l qwen25_vl_7b_text 2 --dtype bf16 >/dev/null
    make wan21_vae wan21_vae all --dtype bf16 >/dev/null ;;
flux)
    make flux_dev_1,1 flux1_dev_dit 1,1 --dtype bf16 >/dev/null
    make flux_dev_2,2 flux1_dev_dit 2,2 --dtype bf16 >/dev/null
    # CLIP-L whole: sd.cpp's metadata validation refuses one missing layers (T5 may have 2)
    make clip_l clip_l_text all --dtype bf16 >/dev/null
    make t5_xxl_2l t5_xxl_encoder 2 >/dev/null
    make flux_vae flux_vae all >/dev/null ;;
zimage)
    make z_image_1 zimage_turbo_dit 1 --dtype bf16 >/dev/null
    make z_image_2 zimage_turbo_dit 2 --dtype bf16 >/dev/null
    make qwen3_4b_2l qwen3_4b_text 2 --dtype bf16 >/dev/null
    make flux_vae flux_vae all >/dev/null ;;
*)
    echo "unknown family '$family' (qwen_image, flux or zimage)" >&2
    exit 2 ;;
esac

echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) threads;" \
    "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o 'avx512[a-z_0-9]*\|avx2\|fma' | sort -u | tr '\n' ' ')"
echo "sd.cpp: $sdcpp ($(git -C "$(dirname "$sdcpp")/../.." rev-parse --short HEAD 2>/dev/null || echo '?'))"
peak=$("$build/bench/model_bench" peak | sed -n 's/.*= \([0-9.]*\) GFLOP\/s/\1/p')
echo "fp32 FMA peak: $peak GFLOP/s; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$python" "$root/bench/compare_sdcpp.py" --kiln "$build/kiln" --sdcpp "$sdcpp" --peak "$peak" --dir "$dir" \
    --reps "${KN_BENCH_REPS:-2}" --steps "${KN_BENCH_STEPS:-3}" --precision "${KN_PRECISION:-fp32}" "$family" "$@"
